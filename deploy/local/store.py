"""Local MongoDB-protocol store: a real ``mongod`` if one is on PATH, otherwise FerretDB on PostgreSQL.

FerretDB v1.24 is run through a tiny launcher (``deploy/local/ferretdb``) built on FerretDB's
embeddable Go package; the binary is cached under ``cache_dir()/bin`` keyed by a hash of the
launcher sources, so only the first run pays for ``go build``.

Layout of ``state_dir``::

    pg-data/        PostgreSQL cluster (owned by the ``postgres`` user when running as root)
    pg-run/         PostgreSQL unix socket directory
    pg.port         port of the cluster (remembered for ``stop`` from another process)
    postgres.log
    ferretdb.log, ferretdb.pid      (or mongod-data/, mongod.log, mongod.pid)

Every server runs in its own process group (session) so that it survives the CLI that started it
and can be stopped by pid file from another process::

    python -m deploy.local.store start --state-dir .local/store --port 27017
    python -m deploy.local.store stop --state-dir .local/store
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from deploy.local.common import (
    REPO_ROOT,
    cache_dir,
    default_state_dir,
    free_port,
    log_tail,
    port_open,
    wait_for_port,
)

LAUNCHER_DIR = REPO_ROOT / "deploy" / "local" / "ferretdb"
PG_USER = "postgres"
PG_DATABASE = "ferretdb"
GIN_TWINS_SQL = Path(__file__).with_name("gin_twins.sql")

# Speed over durability: this cluster only ever holds local/test data.
PG_CONF = """
# --- pinwheel local store (deploy/local/store.py) ---
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 1GB
checkpoint_timeout = 30min
shared_buffers = 64MB
max_connections = 150
log_min_messages = warning
log_line_prefix = '%m [%p] '
"""


def _is_root() -> bool:
    return os.geteuid() == 0


def _pid_alive(pid: int, needle: str) -> bool:
    """True if ``pid`` runs and its command line mentions ``needle`` (guards against pid reuse)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # a zombie is as good as dead
    if status.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return needle.encode() in cmdline


def _read_int(path: Path, line: int = 0) -> int | None:
    try:
        return int(path.read_text().splitlines()[line].strip())
    except (OSError, ValueError, IndexError):
        return None


def _wait_gone(pid: int, needle: str, process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return True
        elif not _pid_alive(pid, needle):
            return True
        time.sleep(0.05)
    return False


def _signal_stop(pid: int, needle: str, process: subprocess.Popen[bytes] | None, first: signal.Signals,
                 timeout: float) -> None:
    """Send ``first`` to ``pid``; SIGKILL its whole process group if it is not gone after ``timeout``."""
    if not _pid_alive(pid, needle) and (process is None or process.poll() is not None):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first)
    if _wait_gone(pid, needle, process, timeout):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, needle, process, 10)


def _find_pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    return None


def _find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    for candidate in ("/usr/local/go/bin/go", str(Path.home() / "go" / "bin" / "go")):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def launcher_hash() -> str:
    digest = hashlib.sha256()
    sources = [LAUNCHER_DIR / "go.mod", LAUNCHER_DIR / "go.sum", *sorted(LAUNCHER_DIR.glob("*.go"))]
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def launcher_path() -> Path:
    return cache_dir() / "bin" / f"ferretdb-launcher-{launcher_hash()}"


def build_launcher(force: bool = False) -> Path:
    """``go build`` the FerretDB launcher into the cache, unless that exact version is there already."""
    target = launcher_path()
    if target.exists() and not force:
        return target
    go = _find_go()
    if go is None:
        raise RuntimeError("Go is needed to build the FerretDB launcher (https://go.dev/dl/), "
                           "or put a real `mongod` on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / ".ferretdb-launcher.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same binary
        if target.exists() and not force:
            return target
        go_cache = cache_dir() / "go"
        env = {
            **os.environ,
            "GOMODCACHE": str(go_cache / "mod"),
            "GOCACHE": str(go_cache / "build"),
            "GOFLAGS": "-modcacherw -buildvcs=false -mod=readonly",
            "CGO_ENABLED": "0",
        }
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        result = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "."], cwd=LAUNCHER_DIR,
                                env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"go build of the FerretDB launcher failed:\n{result.stdout}{result.stderr}")
        os.replace(tmp, target)
    return target


class LocalStore:
    """A MongoDB-protocol server for local runs and tests (see module docstring)."""

    def __init__(self, state_dir: Path, port: int = 27017, pg_port: int | None = None,
                 host: str = "127.0.0.1", *, log_level: str | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.host = host
        self._pg_port = pg_port
        self.log_level = log_level or os.environ.get("PINWHEEL_FERRETDB_LOG_LEVEL", "info")
        forced = os.environ.get("PINWHEEL_STORE_KIND", "")
        if forced not in ("", "mongod", "ferretdb"):
            raise ValueError(f"PINWHEEL_STORE_KIND must be 'mongod' or 'ferretdb', not {forced!r}")
        self.kind: str = forced or ("mongod" if shutil.which("mongod") else "ferretdb")
        self._front: subprocess.Popen[bytes] | None = None
        self._pg: subprocess.Popen[bytes] | None = None
        self._pg_bindir: Path | None = None

    # --- paths -------------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def pg_data(self) -> Path:
        return self.state_dir / "pg-data"

    @property
    def pg_socket_dir(self) -> Path:
        return self.state_dir / "pg-run"

    @property
    def pg_log(self) -> Path:
        return self.state_dir / "postgres.log"

    @property
    def front_log(self) -> Path:
        return self.state_dir / f"{self.kind}.log"

    @property
    def _front_pid_file(self) -> Path:
        return self.state_dir / f"{self.kind}.pid"

    @property
    def _pg_port_file(self) -> Path:
        return self.state_dir / "pg.port"

    @property
    def pg_port(self) -> int:
        """Port of the PostgreSQL cluster: given, else the one used before in this state dir, else free."""
        if self._pg_port is None:
            running = self._pg_running_port()
            remembered = _read_int(self._pg_port_file)
            self._pg_port = running or remembered or free_port()
        return self._pg_port

    @property
    def postgresql_url(self) -> str:
        return f"postgres://{PG_USER}@127.0.0.1:{self.pg_port}/{PG_DATABASE}"

    # --- install -----------------------------------------------------------------------------------

    def install(self) -> None:
        """Make sure the binaries exist: PostgreSQL (apt-get if missing) and the cached launcher."""
        if self.kind == "mongod":
            if shutil.which("mongod") is None:
                raise RuntimeError("PINWHEEL_STORE_KIND=mongod but there is no `mongod` on PATH")
            return
        self._pg_bindir = _find_pg_bindir()
        if self._pg_bindir is None:
            if not (_is_root() and shutil.which("apt-get")):
                raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql), "
                                   "or put a real `mongod` on PATH")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
                           check=True, env=env)
            self._pg_bindir = _find_pg_bindir()
            if self._pg_bindir is None:
                raise RuntimeError("postgresql installed but no postgres binary found")
        if _is_root():
            self._ensure_pg_user()
        build_launcher()

    @staticmethod
    def _ensure_pg_user() -> None:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/var/lib/postgresql", "--shell", "/usr/sbin/nologin", PG_USER],
                           check=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        """Start PostgreSQL (if needed) and the front; return once ``ping`` succeeds. Idempotent."""
        self.install()
        deadline = time.monotonic() + timeout
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "ferretdb":
            self._start_postgres(timeout)
        self._start_front(max(deadline - time.monotonic(), 10.0))

    def stop(self) -> None:
        """Stop the front and PostgreSQL. Safe to call twice (and on a never-started store)."""
        self.stop_front()
        self._stop_postgres()

    def stop_front(self) -> None:
        """Stop only FerretDB/mongod (PostgreSQL keeps running)."""
        pid = self._front_pid()
        if pid is not None:
            _signal_stop(pid, self._front_needle, self._front, signal.SIGTERM, timeout=20)
        self._front = None
        self._front_pid_file.unlink(missing_ok=True)

    def start_front(self) -> None:
        """Start FerretDB/mongod again (PostgreSQL is started too if it is not running)."""
        self.start()

    def kill(self) -> None:
        """SIGKILL the front's process group (fault tests); ``start_front`` brings it back."""
        pid = self._front_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, self._front_needle, self._front, 10)
        self._front = None
        self._front_pid_file.unlink(missing_ok=True)

    def ping(self, timeout_ms: int = 1000) -> bool:
        client: MongoClient[dict[str, Any]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms, 5000), directConnection=True)
        try:
            client.admin.command("ping")
            return True
        except Exception:
            return False
        finally:
            client.close()

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "uri": self.uri,
            "front_pid": self._front_pid(),
            "postgres_port": self._pg_running_port() if self.kind == "ferretdb" else None,
            "ping": self.ping(),
        }

    # --- front (FerretDB launcher or mongod) -------------------------------------------------------

    @property
    def _front_needle(self) -> str:
        return "ferretdb-launcher" if self.kind == "ferretdb" else "mongod"

    def _front_pid(self) -> int | None:
        if self._front is not None and self._front.poll() is None:
            return self._front.pid
        pid = _read_int(self._front_pid_file)
        if pid is not None and _pid_alive(pid, self._front_needle):
            return pid
        return None

    def _front_command(self) -> list[str]:
        if self.kind == "mongod":
            dbpath = self.state_dir / "mongod-data"
            dbpath.mkdir(parents=True, exist_ok=True)
            return ["mongod", "--dbpath", str(dbpath), "--port", str(self.port), "--bind_ip", self.host,
                    "--nounixsocket", "--wiredTigerCacheSizeGB", "0.25"]
        # FerretDB as it is: updates are read-then-write-back, not atomic. The application decides
        # every race by unique-key inserts, and the tests prove that against this weaker store.
        # PINWHEEL_FERRETDB_SERIALIZE_WRITES=1 puts the serializing proxy in front (MongoDB-like updates).
        serialize = os.environ.get("PINWHEEL_FERRETDB_SERIALIZE_WRITES", "0") == "1"
        return [str(launcher_path()), "-listen-addr", f"{self.host}:{self.port}",
                "-postgresql-url", self.postgresql_url, "-log-level", self.log_level,
                f"-serialize-writes={'true' if serialize else 'false'}"]

    def _start_front(self, timeout: float) -> None:
        if self._front_pid() is not None:
            if self.ping(timeout_ms=int(min(timeout, 5) * 1000)):
                return
            self.stop_front()  # running but not answering: restart it
        if port_open(self.host, self.port):
            raise RuntimeError(f"{self.host}:{self.port} is already in use by another process")
        with self.front_log.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.kind} ===\n".encode())
            log.flush()
            self._front = subprocess.Popen(self._front_command(), stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           cwd=self.state_dir)
        self._front_pid_file.write_text(f"{self._front.pid}\n")
        deadline = time.monotonic() + timeout
        try:
            wait_for_port(self.host, self.port, timeout, self._front, self.front_log)
            while not self.ping(timeout_ms=1000):
                if self._front.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited with {self._front.returncode}"
                                       f"{log_tail(self.front_log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.kind} does not answer ping on {self.uri}"
                                       f"{log_tail(self.front_log)}")
                time.sleep(0.1)
        except BaseException:
            self.stop_front()
            raise

    # --- PostgreSQL --------------------------------------------------------------------------------

    def _pg_pid(self) -> int | None:
        if self._pg is not None and self._pg.poll() is None:
            return self._pg.pid
        pid = _read_int(self.pg_data / "postmaster.pid")
        if pid is not None and _pid_alive(pid, "postgres"):
            return pid
        return None

    def _pg_running_port(self) -> int | None:
        if self._pg_pid() is None:
            return None
        return _read_int(self.pg_data / "postmaster.pid", line=3)

    def _pg_run_kwargs(self) -> dict[str, Any]:
        """Run PostgreSQL tools as the ``postgres`` user when we are root (it refuses to run as root)."""
        if not _is_root():
            return {}
        return {"user": PG_USER, "group": pwd.getpwnam(PG_USER).pw_gid, "extra_groups": []}

    def _pg_bin(self, name: str) -> str:
        if self._pg_bindir is None:
            self._pg_bindir = _find_pg_bindir()
            if self._pg_bindir is None:
                raise RuntimeError("PostgreSQL binaries not found; call install()")
        return str(self._pg_bindir / name)

    def _make_traversable_for_pg(self) -> None:
        """As root, ``postgres`` must be able to reach state_dir (pytest's /tmp/pytest-of-root is 0700):
        add the search (x) bit, never read, to the ancestors that lack it."""
        if not _is_root():
            return
        entry = pwd.getpwnam(PG_USER)
        groups = {entry.pw_gid} | set(os.getgrouplist(PG_USER, entry.pw_gid))
        for directory in [*reversed(self.state_dir.parents), self.state_dir]:
            st = directory.stat()
            if st.st_uid == entry.pw_uid:
                needed = stat.S_IXUSR
            elif st.st_gid in groups:
                needed = stat.S_IXGRP
            else:
                needed = stat.S_IXOTH
            if not st.st_mode & needed:
                directory.chmod(stat.S_IMODE(st.st_mode) | needed)

    def _chown_pg(self, path: Path) -> None:
        if _is_root():
            entry = pwd.getpwnam(PG_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        if (self.pg_data / "PG_VERSION").exists():
            return
        self._make_traversable_for_pg()
        if self.pg_data.exists():
            shutil.rmtree(self.pg_data)  # a half-finished initdb
        self.pg_data.mkdir(mode=0o700, parents=True)
        self._chown_pg(self.pg_data)
        result = subprocess.run(
            [self._pg_bin("initdb"), "-D", str(self.pg_data), "-U", PG_USER, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=self.pg_data, capture_output=True, text=True, check=False, **self._pg_run_kwargs())
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}{result.stderr}")
        with (self.pg_data / "postgresql.conf").open("a") as conf:
            conf.write(PG_CONF)

    def _start_postgres(self, timeout: float) -> None:
        running_port = self._pg_running_port()
        if running_port is not None:
            if running_port != self.pg_port:
                raise RuntimeError(f"PostgreSQL of {self.state_dir} already runs on port {running_port}, "
                                   f"not {self.pg_port}; stop it first")
            return
        self._initdb()
        self._make_traversable_for_pg()
        self.pg_socket_dir.mkdir(exist_ok=True)
        self._chown_pg(self.pg_socket_dir)
        # unix socket paths are limited to ~107 bytes; fall back to TCP only for deep state dirs
        socket_dir = str(self.pg_socket_dir) if len(str(self.pg_socket_dir)) < 90 else ""
        port = self.pg_port
        if port_open("127.0.0.1", port):
            raise RuntimeError(f"127.0.0.1:{port} (PostgreSQL port) is already in use")
        self._pg_port_file.write_text(f"{port}\n")
        with self.pg_log.open("ab") as log:
            self._pg = subprocess.Popen(
                [self._pg_bin("postgres"), "-D", str(self.pg_data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={socket_dir}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.pg_data, **self._pg_run_kwargs())
        try:
            wait_for_port("127.0.0.1", port, timeout, self._pg, self.pg_log)
            self._create_database(timeout)
        except BaseException:
            self._stop_postgres()
            raise

    def _create_database(self, timeout: float) -> None:
        psql = [self._pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", PG_USER,
                "-d", "postgres", "-XAtq", "-v", "ON_ERROR_STOP=1"]
        deadline = time.monotonic() + timeout
        while True:  # the port opens slightly before the cluster accepts connections
            result = subprocess.run(
                [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"],
                capture_output=True, text=True, check=False, cwd=self.pg_data, **self._pg_run_kwargs())
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL does not accept connections:\n{result.stderr}"
                                   f"{log_tail(self.pg_log)}")
            time.sleep(0.1)
        if result.stdout.strip() != "1":
            subprocess.run([*psql, "-c", f"CREATE DATABASE {PG_DATABASE}"], capture_output=True,
                           check=True, cwd=self.pg_data, **self._pg_run_kwargs())
        # indexes FerretDB's pushed-down filters can use (see the file); idempotent, every start
        psql[psql.index("-d") + 1] = PG_DATABASE
        result = subprocess.run([*psql, "-f", "-"], input=GIN_TWINS_SQL.read_text(), capture_output=True,
                                text=True, check=False, cwd=self.pg_data, **self._pg_run_kwargs())
        if result.returncode != 0:
            raise RuntimeError(f"installing {GIN_TWINS_SQL.name} failed:\n{result.stdout}{result.stderr}")

    def _stop_postgres(self) -> None:
        pid = self._pg_pid()
        if pid is not None:
            # SIGINT = "fast" shutdown: does not wait for clients to disconnect
            _signal_stop(pid, "postgres", self._pg, signal.SIGINT, timeout=30)
        self._pg = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.store",
                                     description="Local MongoDB-protocol store (mongod or FerretDB+PostgreSQL)")
    parser.add_argument("command", choices=["install", "start", "stop", "status"])
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="data and logs (default: $PINWHEEL_STATE_DIR/store or .local/store)")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--pg-port", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log-level", default=None, help="FerretDB log level (debug, info, warn, error)")
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args(argv)

    state_dir = args.state_dir or default_state_dir() / "store"
    store = LocalStore(state_dir, port=args.port, pg_port=args.pg_port, host=args.host,
                       log_level=args.log_level)
    if args.command == "install":
        store.install()
    elif args.command == "start":
        started = time.monotonic()
        store.start(timeout=args.timeout)
        print(f"{store.kind} ready on {store.uri} in {time.monotonic() - started:.1f}s "
              f"(logs in {store.state_dir})")
    elif args.command == "stop":
        store.stop()
        print(f"{store.kind} stopped")
    else:
        status = store.status()
        for key, value in status.items():
            print(f"{key}: {value}")
        return 0 if status["ping"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
