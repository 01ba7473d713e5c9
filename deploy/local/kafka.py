"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1, without Docker.

The broker jars come from Maven Central: ``deploy/local/kafka/pom.xml`` declares ``org.apache.kafka:kafka_2.13``
(its ``kafka.version`` property is the single source of truth for the version) plus a log4j2 binding, and
``mvn dependency:copy-dependencies`` copies the runtime classpath into ``<cache>/kafka-<VERSION>/libs``. A marker
file records a complete copy, so later starts skip Maven entirely and take a few seconds.

Version choice (see the comment in the pom): the newest Kafka whose artifacts are complete on Maven Central and
that aiokafka 0.14.0 works with; ``tests/integration/test_kafka_local.py`` proves it (idempotent producer,
consumer groups with manual commits, offsets_for_times, admin topic creation, headers, restart).

Usage::

    kafka = LocalKafka(state_dir, port=9092)
    kafka.start()            # installs (first time), formats storage (first time), waits until ready
    kafka.bootstrap_servers  # "127.0.0.1:9092"
    kafka.stop()

or ``python -m deploy.local.kafka start|stop|status [--state-dir D] [--port P]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from deploy.local.common import cache_dir, default_state_dir, log_tail, port_open

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
_MAVEN_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_MARKER = ".complete"
_MAIN_CLASS = "kafka.Kafka"
_NODE_ID = 1

log = logging.getLogger(__name__)


def kafka_version(pom: Path = POM) -> str:
    """The ``kafka.version`` property of the pom: the one place the broker version is set."""
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", _MAVEN_NS)
    if node is None or not (node.text or "").strip():
        raise RuntimeError(f"{pom} has no <kafka.version> property")
    return (node.text or "").strip()


KAFKA_VERSION = kafka_version()

# Small-box JVM settings: a bounded heap and the serial collector start fast and stay quiet on 2 cores.
JVM_OPTS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]

_LOG4J2 = """\
# Written by deploy/local/kafka.py; everything goes to stdout, which the runner appends to kafka.log.
status = warn
# Keep logging while Kafka's own shutdown hook runs, so kafka.log shows the whole clean shutdown.
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.network.name = org.apache.kafka.common.network
logger.network.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


def _find_executable(name: str, env_home: str | None = None) -> str:
    if env_home:
        candidate = Path(os.environ.get(env_home, "")) / "bin" / name
        if os.environ.get(env_home) and candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"`{name}` not found on PATH")
    return found


def _random_cluster_id() -> str:
    """Same format as Kafka's ``Uuid.randomUuid().toString()``: 22 url-safe base64 chars, never a leading '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _proc_state(pid: int) -> str | None:
    """The /proc state letter of a process, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class LocalKafka:
    """One KRaft broker+controller whose data, config, pid file and log all live in ``state_dir``."""

    def __init__(self, state_dir: Path, port: int = 9092, controller_port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.controller_port = controller_port if controller_port is not None else port + 1
        self.host = host
        self.version = KAFKA_VERSION
        self.data_dir = self.state_dir / "kafka-data"
        self.config_file = self.state_dir / "server.properties"
        self.log4j_file = self.state_dir / "log4j2.properties"
        self.log_file = self.state_dir / "kafka.log"
        self.pid_file = self.state_dir / "kafka.pid"
        self.cluster_id_file = self.state_dir / "cluster_id"
        self._process: subprocess.Popen[bytes] | None = None

    # -- public API -----------------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return cache_dir() / f"kafka-{self.version}" / "libs"

    def install(self) -> Path:
        """Copy the broker's runtime jars from Maven Central into the cache (once); return the libs dir."""
        libs = self.libs_dir
        if (libs / _MARKER).exists():
            return libs
        with _file_lock(libs.parent / ".install.lock"):
            if (libs / _MARKER).exists():  # another process finished while we waited
                return libs
            if libs.exists():  # a previous copy was interrupted
                shutil.rmtree(libs)
            cmd = [
                _find_executable("mvn", "MAVEN_HOME"), "-q", "-B",
                "-f", str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
                f"-Dmaven.repo.local={cache_dir() / 'm2'}",
            ]
            log.info("downloading Kafka %s jars: %s", self.version, " ".join(cmd))
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"maven failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
            main_jar = libs / f"kafka_2.13-{self.version}.jar"
            if not main_jar.exists():
                raise RuntimeError(f"maven succeeded but {main_jar} is missing")
            (libs / _MARKER).write_text(self.version + "\n")
        return libs

    def start(self, timeout: float = 120) -> None:
        """Start the broker (formatting storage on first use) and wait until it serves metadata requests.

        Idempotent: if this state dir's broker is already running, only waits for it to be ready.
        """
        deadline = time.monotonic() + timeout
        if self.is_running():
            self._wait_ready(deadline)
            return
        self.pid_file.unlink(missing_ok=True)
        for port in (self.port, self.controller_port):
            if port_open(self.host, port):
                raise RuntimeError(f"{self.host}:{port} is already in use by another process")
        libs = self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(libs)
        with self.log_file.open("ab") as log_out:
            log_out.write(f"\n===== starting Kafka {self.version} at {time.ctime()} =====\n".encode())
            log_out.flush()
            self._process = subprocess.Popen(
                self._java_cmd(libs, _MAIN_CLASS, str(self.config_file)),
                stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                cwd=self.state_dir, start_new_session=True,  # own session => own process group
            )
        self.pid_file.write_text(f"{self._process.pid}\n")
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 30) -> None:
        """Clean shutdown: SIGTERM the broker's process group, wait, SIGKILL if needed. Safe to call twice."""
        pid = self._pid()
        if pid is not None:
            self._signal_group(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                log.warning("Kafka (pid %s) ignored SIGTERM for %.0fs, killing it", pid, timeout)
                self._signal_group(pid, signal.SIGKILL)
                self._wait_exit(pid, 10)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the broker (no controlled shutdown), for fault-injection tests."""
        pid = self._pid()
        if pid is not None:
            self._signal_group(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)
        self._forget()

    def is_running(self) -> bool:
        return self._pid() is not None

    # -- internals ------------------------------------------------------------------------------------------

    def _properties(self) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            "controller.quorum.voters": f"{_NODE_ID}@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "auto.create.topics.enable": "true",
            "num.partitions": "4",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
            "log.segment.bytes": str(16 * 1024 * 1024),
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "log.retention.hours": "168",
            "delete.topic.enable": "true",
        }

    def _write_config(self) -> None:
        lines = ["# Generated by deploy/local/kafka.py; rewritten on every start."]
        lines += [f"{key}={value}" for key, value in self._properties().items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.log4j_file.write_text(_LOG4J2)

    def _cluster_id(self) -> str:
        if self.cluster_id_file.exists():
            return self.cluster_id_file.read_text().strip()
        cluster_id = _random_cluster_id()
        self.cluster_id_file.write_text(cluster_id + "\n")
        return cluster_id

    def _format(self, libs: Path) -> None:
        cmd = self._java_cmd(libs, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                             "-t", self._cluster_id(), "-c", str(self.config_file))
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.state_dir)
        with self.log_file.open("a") as log_out:
            log_out.write(f"===== format storage: {result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}")

    def _java_cmd(self, libs: Path, main_class: str, *args: str) -> list[str]:
        return [
            _find_executable("java", "JAVA_HOME"),
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkafka.logs.dir={self.state_dir}",
            "-cp", f"{libs}/*",
            main_class, *args,
        ]

    def _pid(self) -> int | None:
        """Pid of this state dir's live broker, or None (a stale pid file or a reused pid do not count)."""
        if self._process is not None:
            if self._process.poll() is None:
                return self._process.pid
            self._process = None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _proc_state(pid) in (None, "Z", "X"):
            return None
        cmdline = _cmdline(pid)
        if _MAIN_CLASS not in cmdline or str(self.config_file) not in cmdline:
            return None
        return pid

    def _signal_group(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # the broker leads its own process group (start_new_session)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                try:
                    self._process.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if _proc_state(pid) in (None, "Z", "X"):
                return True
            time.sleep(0.1)
        return False

    def _forget(self) -> None:
        self._process = None
        self.pid_file.unlink(missing_ok=True)

    def _wait_ready(self, deadline: float) -> None:
        """Wait until the port is open and a metadata request lists this broker (i.e. it is unfenced)."""
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self._pid() is None:
                raise RuntimeError(f"Kafka exited before becoming ready{log_tail(self.log_file)}")
            if port_open(self.host, self.port):
                try:
                    if _run_async(self._probe(), timeout=min(10.0, max(1.0, deadline - time.monotonic()))):
                        return
                except Exception as exc:
                    last_error = exc
            time.sleep(0.25)
        raise TimeoutError(f"Kafka at {self.bootstrap_servers} not ready after the timeout "
                           f"(last error: {last_error!r}){log_tail(self.log_file)}")

    async def _probe(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            brokers = {broker["node_id"] for broker in cluster.get("brokers", [])}
            return _NODE_ID in brokers and cluster.get("controller_id") == _NODE_ID
        finally:
            await admin.close()


def _run_async(coro: object, timeout: float) -> bool:
    """Run a coroutine to completion on a private loop in a thread (works even if the caller has a loop)."""
    result: list[bool] = []
    errors: list[BaseException] = []

    def runner() -> None:
        async def bounded() -> bool:
            return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

        try:
            result.append(asyncio.run(bounded()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=runner, name="kafka-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if errors:
        raise errors[0]
    return bool(result and result[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.kafka",
                                     description="Run a local single-node Kafka broker (KRaft) without Docker.")
    parser.add_argument("command", choices=["install", "start", "stop", "kill", "status"])
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="data/log dir (default: $PINWHEEL_STATE_DIR or .local, + /kafka)")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    state_dir = args.state_dir if args.state_dir is not None else default_state_dir() / "kafka"
    kafka = LocalKafka(state_dir, port=args.port, controller_port=args.controller_port, host=args.host)
    if args.command == "install":
        print(kafka.install())
    elif args.command == "start":
        started = time.monotonic()
        kafka.start(timeout=args.timeout)
        print(f"Kafka {kafka.version} ready at {kafka.bootstrap_servers} in {time.monotonic() - started:.1f}s "
              f"(log: {kafka.log_file})")
    elif args.command == "stop":
        kafka.stop()
        print("stopped")
    elif args.command == "kill":
        kafka.kill()
        print("killed")
    else:
        running = kafka.is_running()
        print(f"running at {kafka.bootstrap_servers}" if running else "not running")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
