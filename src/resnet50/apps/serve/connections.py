"""Connection limits uvicorn lacks: a header read timeout, a header size cap, an open-connection cap.

uvicorn's HTTP protocol holds a connection that never sends a request, reads headers for as
long as a client sends them (an endless header stalls the event loop), and caps concurrency
only with a bare 503. :func:`guarded_protocol` subclasses its httptools protocol so that:

- headers not received within ``header_timeout`` seconds of the connection (or of the first
  byte of a keep-alive request) get 408 and the connection closes;
- headers larger than ``max_header_bytes`` get 431 and the connection closes;
- past ``max_connections`` open connections, a request gets 503 with ``Retry-After``;
- a body still trickling in ``body_timeout`` seconds after its headers, once the request was
  answered without it, closes the connection (the app answers a body it waits for with 408);
- on shutdown, a request still sending its body (so never admitted) gets 503 at once.

Each refusal is a JSON ``{"error": ...}`` naming the limit and its flag, counted in
``resnet50_connections_refused_total{reason}``. The idle time between keep-alive requests
is uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from resnet50.apps.serve.metrics import Metrics

REFUSED = "resnet50.refused"  # scope key: why the protocol answered a request itself (its app sees a disconnect)
LINGER_S = 1.0  # after a refusal, how long what the client still sends is read and dropped
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection limits of one server (the ``serve`` command's flags)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 512


def refusal(status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete HTTP/1.1 response ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}".encode()]
    head += [b"content-type: application/json", b"content-length: " + str(len(body)).encode()]
    head += [name + b": " + value for name, value in extra] + [b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def guarded_protocol(limits: ConnectionLimits, metrics: Metrics, log: Callable[[str], None]) -> type[asyncio.Protocol]:
    """uvicorn's httptools HTTP protocol with ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    cap = {"over": False}  # whether the connection cap is being hit, to log the change once

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._in_headers = True
            self._header_bytes = 0
            self._lingering = False
            self._body_deadline = None
            self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timed_out)
            self._body_timer = None
            metrics.connections.set(len(self.connections))

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            super().connection_lost(exc)
            metrics.connections.set(len(self.connections))
            if cap["over"] and len(self.connections) < limits.max_connections:
                cap["over"] = False
                log(f"open connections back under --max-connections {limits.max_connections}")

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # refused: what the client still sends is dropped
                return
            super().data_received(data)
            if self._in_headers and not self._lingering and not self.transport.is_closing():
                self._header_bytes += len(data)  # the parser is still inside the headers after this
                if self._header_bytes > limits.max_header_bytes:
                    self._refuse(
                        431,
                        "headers_too_large",
                        f"request headers larger than {limits.max_header_bytes // 1024} KiB (--max-header-kb)",
                    )

        # --- parser callbacks ---
        def on_message_begin(self) -> None:
            if self._lingering:
                return
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = 0
            if self._header_timer is None:  # a keep-alive request: its headers are timed from here
                self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timed_out)

        def on_url(self, url: bytes) -> None:
            if not self._lingering:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._lingering:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._lingering:
                return
            self._in_headers = False
            self._cancel_timers()
            if len(self.connections) > limits.max_connections:
                if not cap["over"]:
                    cap["over"] = True
                    log(
                        f"{len(self.connections)} connections open: answering 503 past --max-connections "
                        f"{limits.max_connections}"
                    )
                self._refuse(
                    503,
                    "max_connections",
                    f"server busy: {len(self.connections)} connections open, the limit is "
                    f"{limits.max_connections} (--max-connections); retry after 1 s",
                    ((b"retry-after", b"1"),),
                )
                return
            super().on_headers_complete()
            self._body_deadline = time.monotonic() + limits.body_timeout
            self._body_timer = self.loop.call_later(limits.body_timeout, self._body_timed_out)

        def on_body(self, body: bytes) -> None:
            if not self._lingering:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._lingering:
                return
            self._body_deadline = None
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._body_deadline is not None and time.monotonic() >= self._body_deadline:
                self._body_timed_out()  # answered without its body, which is still overdue

        def shutdown(self) -> None:
            """SIGTERM: a request still sending its body holds no queue slot and was never
            accepted: it gets 503 at once instead of holding the shutdown for its body timeout."""
            cycle = self.cycle
            if (
                cycle is not None
                and not cycle.response_started
                and cycle.more_body
                and self._body_deadline is not None
                and not self._lingering
            ):
                cycle.scope[REFUSED] = "shutdown"  # tells the app why its client is gone
                self._refuse(503, "shutdown", "server shutting down; retry", ((b"retry-after", b"1"),), own_cycle=True)
                cycle.disconnected = True  # the app stops waiting for the body; what it sends is dropped
                cycle.message_event.set()
                return
            super().shutdown()

        def _unsupported_upgrade_warning(self) -> None:
            """No upgrade is offered (no WebSocket endpoints): the request is answered as plain HTTP,
            without uvicorn's two warning lines for each one."""

        # --- limits ---
        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self._in_headers and not self._lingering and not self.transport.is_closing():
                self._refuse(
                    408,
                    "header_timeout",
                    f"request headers not received within {limits.header_timeout:g} s (--header-timeout)",
                )

        def _body_timed_out(self) -> None:
            """Overdue body: the app answers 408 to a body it is reading; one nobody reads (the
            request was answered without it) only holds the connection, which closes."""
            self._body_timer = None
            cycle = self.cycle
            if self._body_deadline is None or self._lingering or self.transport.is_closing():
                return
            if cycle is None or cycle.response_complete:
                metrics.refused.inc("body_timeout")
                self._linger()

        def _refuse(self, status: int, reason: str, message: str, extra=(), own_cycle: bool = False) -> None:
            """Answer ``status`` and close. ``own_cycle``: the refused request is the current cycle
            (on shutdown); otherwise an earlier request's answer may still be to come, and then the
            connection only closes after it (nothing is written in between)."""
            metrics.refused.inc(reason)
            self._cancel_timers()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not own_cycle:
                self._lingering = True
                self._in_headers = False
                cycle.keep_alive = False
                return
            self.transport.write(refusal(status, message, extra))
            self._linger()

        def _linger(self) -> None:
            """Close gracefully: end our side, drop what the client still sends for a moment, then
            close (closing with unread data would reset the connection before the client reads)."""
            self._lingering = True
            self._in_headers = False
            self.flow.resume_reading()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self._close)

        def _close(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def _cancel_timers(self) -> None:
            for name in ("_header_timer", "_body_timer"):
                timer = getattr(self, name, None)
                if timer is not None:
                    timer.cancel()
                    setattr(self, name, None)

    return GuardedProtocol
