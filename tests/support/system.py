"""The three services as real processes (``python -m services.<name>``) on free ports, against the
session's Kafka and store, isolated by a namespace: what e2e and fault tests drive over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deploy.local.common import REPO_ROOT, free_port
from shared.settings import LOCAL_DEV_JWT_SECRET
from tests.support.services import token

SERVICES = ("referral", "groupbuy", "rewards")


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{self.name}", cwd=REPO_ROOT, env=self.env,
            stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        log.close()

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while asyncio.get_running_loop().time() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready in {timeout}s; see {self.log_path}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash or an OOM kill."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                await self.kill()

    async def restart(self) -> None:
        await self.kill()
        self.restarts += 1
        await self.start()


@dataclass
class System:
    namespace: str
    infra: Any
    log_dir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    @property
    def topic_prefix(self) -> str:
        return f"{self.namespace}."

    def database(self, service: str) -> str:
        return f"{self.namespace}_{service}"

    def client(self, service: str) -> httpx.AsyncClient:
        return self.clients[service]

    async def call(self, service: str, method: str, path: str, user: str, scopes: str = "",
                   **kwargs: Any) -> httpx.Response:
        headers = {**token(user, scopes), **kwargs.pop("headers", {})}
        return await self.clients[service].request(method, path, headers=headers, **kwargs)


def _env(system: System, service: str, port: int, extra: dict[str, str]) -> dict[str, str]:
    prefix = service.upper()
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": system.infra.bootstrap_servers,
        "MONGODB_URI": system.infra.mongodb_uri,
        "PINWHEEL_TOPIC_PREFIX": system.topic_prefix,
        "PINWHEEL_ENV": "test",
        "PINWHEEL_JWT_SECRET": LOCAL_DEV_JWT_SECRET,
        "PINWHEEL_LOG_FORMAT": "json",
        f"{prefix}_PORT": str(port),
        f"{prefix}_MONGODB_DATABASE": system.database(service),
        f"{prefix}_CONSUMER_GROUP": f"{system.namespace}-{service}",
        f"{prefix}_OUTBOX_POLL_SECONDS": "0.2",
        **extra,
    }


@contextlib.asynccontextmanager
async def running_system(infra: Any, namespace: str, log_dir: Path,
                         extra_env: dict[str, dict[str, str]] | None = None) -> AsyncIterator[System]:
    system = System(namespace, infra, log_dir)
    extra_env = extra_env or {}
    for name in SERVICES:
        port = free_port()
        system.services[name] = ServiceProcess(name, port, _env(system, name, port, extra_env.get(name, {})),
                                               log_dir / f"{name}.log")
    try:
        for service in system.services.values():
            await service.start()
        for service in system.services.values():
            await service.wait_ready()
        for name, service in system.services.items():
            system.clients[name] = httpx.AsyncClient(base_url=service.url, timeout=10)
        yield system
    finally:
        for client in system.clients.values():
            await client.aclose()
        for service in system.services.values():
            await service.stop()
