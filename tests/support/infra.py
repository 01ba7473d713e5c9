"""Real Kafka and a real MongoDB-protocol server for the test session.

Order of preference: ``KAFKA_BOOTSTRAP_SERVERS`` / ``MONGODB_URI`` from the environment; a Docker
engine through testcontainers; otherwise the local no-Docker runners of ``deploy/local`` on free
ports in a throw-away state directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.common import free_port


@dataclass
class Infra:
    bootstrap_servers: str
    mongodb_uri: str
    kafka: Any = None  # LocalKafka when we run it (fault tests can stop and restart it)
    store: Any = None  # LocalStore when we run it
    notes: list[str] = field(default_factory=list)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def session_infra() -> Iterator[Infra]:
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    env_mongo = os.environ.get("MONGODB_URI")
    with contextlib.ExitStack() as stack:
        use_docker = (env_kafka is None or env_mongo is None) and docker_available()
        state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pinwheel-test-")))
        kafka_obj: Any = None
        store_obj: Any = None
        if env_kafka:
            bootstrap = env_kafka
        elif use_docker:
            from testcontainers.kafka import KafkaContainer

            container = stack.enter_context(KafkaContainer().with_kraft())
            bootstrap = container.get_bootstrap_server()
        else:
            from deploy.local.kafka import LocalKafka

            kafka_obj = LocalKafka(state_dir / "kafka", port=free_port(), controller_port=free_port())
            kafka_obj.start()
            stack.callback(kafka_obj.stop)
            bootstrap = kafka_obj.bootstrap_servers
        if env_mongo:
            uri = env_mongo
        elif use_docker:
            from testcontainers.mongodb import MongoDbContainer

            mongo = stack.enter_context(MongoDbContainer("mongo:7"))
            uri = mongo.get_connection_url()
        else:
            from deploy.local.store import LocalStore

            store_obj = LocalStore(state_dir / "store", port=free_port(), pg_port=free_port())
            store_obj.start()
            stack.callback(store_obj.stop)
            uri = store_obj.uri
        yield Infra(bootstrap, uri, kafka_obj, store_obj)
