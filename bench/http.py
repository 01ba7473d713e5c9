"""A lean HTTP/1.1 keep-alive client for load generation, so the bench measures the service.

Why not httpx: on this 2-core box, 100 concurrent requests through ``httpx.AsyncClient`` cost the
client ~5 ms of CPU each: ``GET /healthz`` of a groupbuy process measured ~200 requests/s, p99
4.4 s through httpx, and ~4,000 requests/s, p99 29 ms through plain keep-alive connections in
the same script (the client and the server share the cores, so a heavy client slows the server
too). Like wrk or hey, this sends requests on persistent connections, one request at a time per
connection, and reads ``Content-Length`` bodies (all the services send).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IDLE_EXPIRY = 2.0  # seconds; uvicorn closes idle keep-alive connections after 5 s


@dataclass
class Response:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.content[:300]!r}")


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpPool:
    """At most ``size`` open connections to one ``base_url``; a request waits for a free one."""

    def __init__(self, base_url: str, size: int, timeout: float = 60) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"plain http only: {base_url}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(size)

    async def __aenter__(self) -> HttpPool:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return await self.request("GET", path, headers)

    async def post(self, path: str, headers: dict[str, str] | None = None, json: Any = None) -> Response:
        return await self.request("POST", path, headers, json)

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: Any = None) -> Response:
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(payload)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        message = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        async with self.slots:
            connection = await self._connection()
            try:
                async with asyncio.timeout(self.timeout):
                    connection.writer.write(message)
                    response, keep = await _read_response(connection.reader)
            except BaseException:
                connection.close()
                raise
            if keep:
                connection.last_used = time.monotonic()
                self.idle.append(connection)
            else:
                connection.close()
            return response

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if now - connection.last_used < IDLE_EXPIRY and not connection.reader.at_eof():
                return connection
            connection.close()  # may have been closed by the server: never reuse a stale one
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Connection(reader, writer, now)


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    fields = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    if "content-length" not in fields:  # uvicorn sends one for every JSON response
        raise RuntimeError(f"HTTP {status} without Content-Length: not supported by this client")
    content = await reader.readexactly(int(fields["content-length"]))
    return Response(status, content), fields.get("connection", "").lower() != "close"
