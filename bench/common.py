"""What every scenario shares: infra, isolated namespaces, service processes, event builders,
statistics and charts. Nothing here asserts a time: figures are reported, never tested."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from deploy.local.common import free_port
from shared.auth import issue_token
from shared.settings import LOCAL_DEV_JWT_SECRET

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CHARTS_DIR = BENCH_DIR / "charts"


@dataclass
class Infra:
    bootstrap_servers: str
    mongodb_uri: str
    started_here: bool
    kafka_version: str = "?"
    store_version: str = "?"


@contextlib.contextmanager
def infra() -> Iterator[Infra]:
    """KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI when set, else our own local Kafka and store on free
    ports in a throw-away state directory (what the test session does without Docker)."""
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    env_mongo = os.environ.get("MONGODB_URI")
    with contextlib.ExitStack() as stack:
        state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pinwheel-bench-")))
        if env_kafka:
            bootstrap = env_kafka
        else:
            from deploy.local.kafka import LocalKafka

            kafka = LocalKafka(state_dir / "kafka", port=free_port(), controller_port=free_port())
            print("bench: starting a local Kafka ...", flush=True)
            kafka.start()
            stack.callback(kafka.stop)
            bootstrap = kafka.bootstrap_servers
        if env_mongo:
            uri = env_mongo
        else:
            from deploy.local.store import LocalStore

            store = LocalStore(state_dir / "store", port=free_port(), pg_port=free_port())
            print("bench: starting a local store ...", flush=True)
            store.start()
            stack.callback(store.stop)
            uri = store.uri
        found = Infra(bootstrap, uri, started_here=not (env_kafka and env_mongo))
        found.kafka_version = _kafka_version()
        found.store_version = _store_version(uri)
        yield found


def _kafka_version() -> str:
    try:
        from deploy.local.kafka import kafka_version

        return f"Apache Kafka {kafka_version()} (KRaft, one node)"
    except Exception:
        return "unknown"


def _store_version(uri: str) -> str:
    from pymongo import MongoClient

    try:
        client: MongoClient[dict[str, Any]]
        with MongoClient(uri, serverSelectionTimeoutMS=3000) as client:
            info = client.admin.command("buildInfo")
        ferret = info.get("ferretdbVersion") or (info.get("ferretdbFeatures") and "FerretDB")
        if ferret:
            return f"FerretDB {ferret} (MongoDB wire {info.get('version')}) on PostgreSQL"
        return f"MongoDB {info.get('version')}"
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    import aiokafka
    import pymongo

    return {"nproc": str(os.cpu_count()), "memory": memory, "cpu": cpu,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "aiokafka": aiokafka.__version__, "pymongo": pymongo.version,
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def namespace(tag: str) -> str:
    return f"bench{tag}{uuid.uuid4().hex[:6]}"


def auth(user: str, scope: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(LOCAL_DEV_JWT_SECRET, user, scope)}"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def envelope(event_type: str, data: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "urn:bench", "type": event_type,
            "time": now_iso(), "datacontenttype": "application/json", "data": data}


def qualified(inviter: str, invitee: str) -> dict[str, Any]:
    return envelope("referral.qualified", {
        "inviter_id": inviter, "invitee_id": invitee, "order_id": f"o-{invitee}", "qualified_count": 1,
        "qualified_at": now_iso(), "source_event_id": str(uuid.uuid4())})


def order_completed(user: str, order_id: str, amount: int = 6800) -> dict[str, Any]:
    return envelope("order.completed", {"order_id": order_id, "user_id": user, "amount": amount,
                                        "currency": "CNY", "completed_at": now_iso()})


def group_formed(group_id: str, initiator: str) -> dict[str, Any]:
    return envelope("groupbuy.group_formed", {
        "group_id": group_id, "campaign_id": "c-bench", "initiator_id": initiator,
        "tier": {"size": 2, "percent_off": 20}, "list_price": 1000, "members": [], "formed_at": now_iso()})


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def produce(bootstrap: str, records: Sequence[tuple[str, str, bytes]]) -> float:
    """Produce (topic, key, value) records as fast as the producer takes them; returns seconds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                max_batch_size=256 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for topic, key, value in records:
            pending.append(await producer.send(topic, value, key=key.encode()))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def service_env(service: str, infra: Infra, ns: str, port: int, **extra: str) -> dict[str, str]:
    prefix = service.upper()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers, "MONGODB_URI": infra.mongodb_uri,
           "PINWHEEL_TOPIC_PREFIX": f"{ns}.", "PINWHEEL_ENV": "local", "PINWHEEL_LOG_LEVEL": "WARNING",
           "PINWHEEL_LOG_FORMAT": "json", "PINWHEEL_JWT_SECRET": LOCAL_DEV_JWT_SECRET,
           f"{prefix}_PORT": str(port), f"{prefix}_MONGODB_DATABASE": f"{ns}_{service}",
           f"{prefix}_CONSUMER_GROUP": f"{ns}-{service}"}
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def service_processes(service: str, infra: Infra, ns: str, count: int = 1,
                            profile_dir: Path | None = None, **extra: str) -> AsyncIterator[list[ServiceProcess]]:
    """``count`` real processes of a service (``python -m services.<name>``, uvicorn), one consumer
    group; returns when every ``/readyz`` is green. Stopped (SIGTERM, then SIGKILL) on exit."""
    procs: list[ServiceProcess] = []
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    log_dir = Path(tempfile.mkdtemp(prefix=f"pinwheel-bench-{service}-"))
    try:
        for i in range(count):
            port = free_port()
            log_path = log_dir / f"{service}-{i}.log"
            command = [sys.executable, "-m", f"services.{service}"]
            if profile_dir is not None:
                command = [sys.executable, "-m", "bench.profiled", service,
                           str(profile_dir / f"{service}-{i}.html")]
            with log_path.open("wb") as log:
                process = subprocess.Popen(command,  # noqa: ASYNC220 (starting is quick)
                                           cwd=REPO_ROOT, env=service_env(service, infra, ns, port, **extra),
                                           stdout=log, stderr=subprocess.STDOUT)
            procs.append(ServiceProcess(service, port, process, log_path))
        async with httpx.AsyncClient(timeout=2) as client:
            for proc in procs:
                await _wait_ready(client, proc)
        yield procs
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.terminate()
        for proc in procs:
            try:
                proc.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()


async def _wait_ready(client: httpx.AsyncClient, proc: ServiceProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{proc.url}/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready in {timeout}s: {proc.log_path.read_text()[-3000:]}")


async def drop_database(infra: Infra, name: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongodb_uri)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


async def drop_topics(infra: Infra, ns: str) -> None:
    """Delete the run's topics (``<ns>.*``, including those the services created): a broker that
    keeps thousands of partitions from earlier runs answers produce requests with spikes of
    latency that belong to no scenario (seen: 3,494 topics on a long-lived dev broker)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap_servers)
    await admin.start()
    try:
        mine = [topic for topic in await admin.list_topics() if topic.startswith(f"{ns}.")]
        if mine:
            await admin.delete_topics(mine)
    except Exception as exc:  # cleanup only: the figures are measured already
        print(f"bench: could not delete the topics of {ns}: {exc!r}", flush=True)
    finally:
        await admin.close()


# ------------------------------------------------------------------ statistics and charts


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class ScenarioResult:
    key: str
    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # table rows (name, value columns)
    target: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    chart: str | None = None
    seconds: float = 0.0


def chart_path(key: str) -> Path:
    CHARTS_DIR.mkdir(parents=True, exist_ok=True)
    return CHARTS_DIR / f"{key}.png"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdf(ax: Any, curves: Sequence[tuple[str, Sequence[float], str | None]], target_ms: float,
                     xlabel: str, ylabel: str) -> None:
    """Cumulative latency curves (label, latencies in ms, colour) on a log axis, with the target."""
    for label, latencies, color in curves:
        values = sorted(latencies)
        if values:
            ax.plot(values, [100 * (i + 1) / len(values) for i in range(len(values))], color=color, label=label)
    ax.axvline(target_ms, color="red", linestyle="--", label=f"target p99 {target_ms:.0f} ms")
    ax.set_xscale("log")
    # plain milliseconds on the axis, and only the 1-2-5 steps: matplotlib's default labels every
    # minor tick as 3×10^1, 4×10^1… and they overlap
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def finish_chart(fig: Any, result: Any, started: float) -> Any:
    """Save a scenario's chart next to the others and close the scenario's result."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(chart_path(result.key), dpi=110)
    plt.close(fig)
    result.chart = chart_path(result.key).name
    result.seconds = time.perf_counter() - started
    return result
