"""A lean keep-alive HTTP/1.1 client for load tests on loopback.

The load generator shares the server's cores, so every millisecond it spends per request
is taken from the server: httpx spent ~2.8 ms of CPU per request here (0.10 cores at 36
req/s). This client does only what a load test needs (one request per connection at a
time, TCP_NODELAY as curl and Triton's perf_analyzer set it) on asyncio streams. It reads
``Content-Length`` bodies only: no HEAD, 204 or chunked answers (``serve`` sends none).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]  # lower-case names
    content: bytes


class LoopbackClient:
    """Requests to one ``http://host:port`` over a pool of kept-alive connections.

    A connection idle for ``max_idle_s`` is not reused: the server may be closing it (uvicorn
    drops keep-alive connections after 5 s), and a request sent into that close is lost."""

    def __init__(self, base_url: str, max_idle_s: float = 2.0):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.max_idle_s = max_idle_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def _reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < self.max_idle_s and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def request(self, method: str, path: str, body: bytes = b"", extra_headers: str = "") -> Response:
        """One request on an idle connection (or a new one); a broken one raises ConnectionError.
        ``extra_headers``: header lines, each ending in CRLF."""
        try:
            reader, writer = self._reusable() or await self._connect()
        except OSError as exc:  # refused, or out of file descriptors
            raise ConnectionError(f"{method} {path}: cannot connect: {exc!r}") from None
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
            head += f"{extra_headers}\r\n"
            writer.write(head.encode("latin-1") + body)
            status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            status = int(status_line.split(" ", 2)[1])
            content = await reader.readexactly(int(headers["content-length"]))
        except BaseException as exc:
            writer.close()
            if isinstance(exc, (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError, KeyError)):
                raise ConnectionError(f"{method} {path}: {exc!r}") from None
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return Response(status, headers, content)

    async def post(self, path: str, body: bytes, extra_headers: str = "") -> Response:
        return await self.request("POST", path, body, extra_headers)

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def aclose(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()
