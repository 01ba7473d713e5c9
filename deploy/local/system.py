"""The whole system on one machine without Docker: Kafka, the MongoDB-protocol store and the three
services as processes, with their state, logs and pid files under ``.local/`` (or $PINWHEEL_STATE_DIR).

``up`` returns when every ``/readyz`` is green; ``down`` stops everything; ``run`` does ``up`` in
the foreground and stops everything on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.local.common import REPO_ROOT, default_state_dir, port_open

SERVICES = ("referral", "groupbuy", "rewards")
DEFAULT_PORTS = {"referral": 8001, "groupbuy": 8002, "rewards": 8003}


@dataclass(frozen=True)
class SystemConfig:
    state_dir: Path
    kafka_port: int
    mongo_port: int
    service_ports: dict[str, int]

    @classmethod
    def from_env(cls) -> SystemConfig:
        ports = {name: int(os.environ.get(f"{name.upper()}_PORT", default)) for name, default in DEFAULT_PORTS.items()}
        return cls(
            state_dir=default_state_dir(),
            kafka_port=int(os.environ.get("PINWHEEL_KAFKA_PORT", "9092")),
            mongo_port=int(os.environ.get("PINWHEEL_MONGO_PORT", "27017")),
            service_ports=ports,
        )

    @property
    def run_dir(self) -> Path:
        path = self.state_dir / "run"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.service_ports[service]}"


def _say(message: str) -> None:
    print(f"[pinwheel] {message}", flush=True)


def infra_env(config: SystemConfig) -> dict[str, str]:
    """KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI from the environment win; otherwise our local servers."""
    env: dict[str, str] = {}
    if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
        from deploy.local.kafka import LocalKafka

        kafka = LocalKafka(config.state_dir / "kafka", port=config.kafka_port)
        started = time.monotonic()
        kafka.start()
        _say(f"Kafka ready on {kafka.bootstrap_servers} ({time.monotonic() - started:.1f}s)")
        env["KAFKA_BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers
    if "MONGODB_URI" not in os.environ:
        from deploy.local.store import LocalStore

        store = LocalStore(config.state_dir / "store", port=config.mongo_port)
        started = time.monotonic()
        store.start()
        _say(f"{store.kind} ready on {store.uri} ({time.monotonic() - started:.1f}s)")
        env["MONGODB_URI"] = store.uri
    return env


def stop_infra(config: SystemConfig) -> None:
    if "MONGODB_URI" not in os.environ:
        from deploy.local.store import LocalStore

        LocalStore(config.state_dir / "store", port=config.mongo_port).stop()
    if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
        from deploy.local.kafka import LocalKafka

        LocalKafka(config.state_dir / "kafka", port=config.kafka_port).stop()


def _pid_file(config: SystemConfig, service: str) -> Path:
    return config.run_dir / f"{service}.pid"


def _alive(pid: int) -> bool:
    try:  # reap it if it is our own child (`run` starts the services itself): a zombie is not alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def start_services(config: SystemConfig, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    processes = []
    for service in SERVICES:
        pid_file = _pid_file(config, service)
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            _say(f"{service} already running (pid {pid_file.read_text().strip()})")
            continue
        if port_open("127.0.0.1", config.service_ports[service]):
            raise RuntimeError(f"port {config.service_ports[service]} for {service} is taken by another program")
        log_file = (config.state_dir / f"{service}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO_ROOT,
            env={**os.environ, **env, f"{service.upper()}_PORT": str(config.service_ports[service]),
                 "PINWHEEL_LOG_FORMAT": os.environ.get("PINWHEEL_LOG_FORMAT", "json")},
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        pid_file.write_text(str(process.pid))
        processes.append(process)
    return processes


def readiness(config: SystemConfig, service: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(config.url(service) + "/readyz", timeout=2) as response:
            body: dict[str, object] = json.loads(response.read())
            return body
    except Exception:
        return None


def wait_ready(config: SystemConfig, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    pending = set(SERVICES)
    while pending and time.monotonic() < deadline:
        for service in sorted(pending):
            body = readiness(config, service)
            if body is not None and body.get("status") == "ready":
                _say(f"{service} ready at {config.url(service)}  (OpenAPI {config.url(service)}/docs)")
                pending.discard(service)
        time.sleep(0.5)
    if pending:
        raise TimeoutError(f"not ready after {timeout:.0f}s: {sorted(pending)}; see {config.state_dir}/*.log")


def stop_services(config: SystemConfig) -> None:
    """SIGTERM to every service at once, then wait (SIGKILL after 20 s): each drains on its own."""
    running: dict[str, int] = {}
    for service in SERVICES:
        pid_file = _pid_file(config, service)
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            running[service] = pid
        else:
            pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + 20
    while running and time.monotonic() < deadline:
        for service, pid in list(running.items()):
            if not _alive(pid):
                del running[service]
                _pid_file(config, service).unlink(missing_ok=True)
                _say(f"{service} stopped")
        time.sleep(0.2)
    for service, pid in running.items():
        os.kill(pid, signal.SIGKILL)
        _pid_file(config, service).unlink(missing_ok=True)
        _say(f"{service} killed after 20 s")


def up(config: SystemConfig | None = None) -> dict[str, str]:
    config = config or SystemConfig.from_env()
    env = infra_env(config)
    (config.run_dir / "env.json").write_text(json.dumps(env))
    start_services(config, env)
    wait_ready(config)
    return env


def down(config: SystemConfig | None = None) -> None:
    config = config or SystemConfig.from_env()
    stop_services(config)
    stop_infra(config)
    _say("stopped")
