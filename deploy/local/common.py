"""Paths, ports and small process helpers shared by the local Kafka and store runners."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Downloads and builds live here so that a second run starts in seconds."""
    root = Path(os.environ.get("PINWHEEL_CACHE_DIR", Path.home() / ".cache" / "pinwheel"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def default_state_dir() -> Path:
    """Data directories and logs of a local run (gitignored)."""
    root = Path(os.environ.get("PINWHEEL_STATE_DIR", REPO_ROOT / ".local"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None,
                  log_file: Path | None = None) -> None:
    """Wait until something listens on host:port; fail early (with the log tail) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on "
                               f"{host}:{port}{log_tail(log_file)}")
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s{log_tail(log_file)}")


def log_tail(log_file: Path | None, lines: int = 40) -> str:
    if log_file is None or not log_file.exists():
        return ""
    tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log_file) + " ---\n" + "\n".join(tail)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
