"""The server's run loop: claim the address, build the app, serve until SIGTERM/Ctrl-C drains it."""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import socket
import sys
from dataclasses import dataclass, replace

from resnet50.api.model import ResNet50
from resnet50.apps.serve.connections import ConnectionLimits
from resnet50.core.cpu import physical_cores
from resnet50.core.errors import BackendUnavailableError, InvalidInputError, ResNet50Error


@dataclass(frozen=True)
class ServeSettings:
    """Batching, limits and shutdown of one server (the ``serve`` command's flags)."""

    max_batch: int
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_mb: float = 32.0
    max_megapixels: float = 100.0
    workers: int = 4
    graceful_timeout: float = 30.0
    log_level: str = "warning"
    grpc_port: int | None = None  # also serve the Open Inference Protocol over gRPC on this port (0: a free one)
    # A batch of 32 FP32 images is 32*3*224*224*4 = 19.3 MB; 32 MiB, the HTTP body limit, takes it
    # with room for the framing (up to 55 images), where gRPC's own 4 MiB stops at 6.
    grpc_max_message_mb: float = 32.0
    header_timeout: float = ConnectionLimits.header_timeout
    body_timeout: float = ConnectionLimits.body_timeout
    keep_alive_timeout: float = ConnectionLimits.keep_alive_timeout
    max_header_kb: float = ConnectionLimits.max_header_bytes / 1024
    max_connections: int = ConnectionLimits.max_connections

    def limits(self) -> ConnectionLimits:
        """The connection limits of these settings."""
        return ConnectionLimits(
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            keep_alive_timeout=self.keep_alive_timeout,
            max_header_bytes=int(self.max_header_kb * 1024),
            max_connections=self.max_connections,
        )


def serving_defaults(
    streams: int | None, max_batch: int | None, threads: int | None = None, device: str = "cpu"
) -> tuple[int, int]:
    """The model streams and max batch that ``serve`` uses unless told otherwise.

    Two streams of half the threads each, one image per run: a 2-thread run stalls whenever
    decoding or HTTP work preempts either thread, and a 1-thread stream gains little from
    batches, while a batch makes its first image wait for the last: a shorter tail under load
    (``benchmarks/serve_configs.py``; figures in docs/performance.md)."""
    if streams is None:
        streams = 1 if device == "cuda" else min(2, threads or physical_cores())
    if max_batch is None:
        max_batch = 8 if streams == 1 else 1
    return streams, max_batch


def bind(host: str, port: int) -> socket.socket:
    """Claim the address before the (slow) model load, so a taken port fails at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: without it the response body waits for the ACK of
        # the headers, which a keep-alive client delays (TCP delayed ACK).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(model: ResNet50, sock: socket.socket, settings: ServeSettings) -> None:
    """Serve ``model`` on the bound ``sock`` until a signal drains the server."""
    try:
        import uvicorn
        import uvicorn.protocols.http.httptools_impl  # needs httptools

        from resnet50.apps.serve.app import create_app
        from resnet50.apps.serve.connections import guarded_protocol
    except ImportError as exc:
        raise BackendUnavailableError(f"resnet50 serve needs {exc.name}: pip install 'resnet50[serve]'") from None
    limits = _fit_open_files(settings.limits())
    app = create_app(
        model,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        max_body_mb=settings.max_body_mb,
        max_megapixels=settings.max_megapixels,
        workers=settings.workers,
        body_timeout=limits.body_timeout,
        log=_log,
    )
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits, app.metrics, _log),
        ws="none",  # no WebSocket endpoints: an upgrade request is answered as plain HTTP
        timeout_keep_alive=limits.keep_alive_timeout,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout,
        access_log=settings.log_level in ("info", "debug"),
        lifespan="on",
    )
    print(
        f"resnet50 serve: listening on http://{shown}:{port} ({model.precision}, weights {model.weights}, "
        f"{model.backend.streams} model streams, max batch {settings.max_batch}, max wait {settings.max_wait_ms:g} ms, "
        f"max queue {settings.max_queue}, {settings.workers} decode threads, "
        f"at most {limits.max_connections} connections)",
        file=sys.stderr,
        flush=True,
    )
    if not ipaddress.ip_address(host).is_loopback:
        print(
            f"resnet50 serve: warning: bound to {host}, not loopback: other machines can reach this server",
            file=sys.stderr,
        )
    frontends = []
    if settings.grpc_port is not None:
        from resnet50.apps.serve.grpc import GrpcFrontend

        grpc_options = {"max_message_mb": settings.grpc_max_message_mb, "grace": settings.graceful_timeout}
        frontends.append(GrpcFrontend(app.state, host, settings.grpc_port, **grpc_options))
    app.state.before_stop.extend(frontend.stop for frontend in frontends)
    # Everything loaded so far lives as long as the server: out of the collector's sight, a
    # full collection under load scans only what requests create, not the whole model.
    gc.collect()
    gc.freeze()
    server = _draining_server(config, frontends)
    server.run(sockets=[sock])
    if server.failure is not None:
        raise server.failure


def _log(message: str) -> None:
    print(f"resnet50 serve: {message}", file=sys.stderr, flush=True)


def _fit_open_files(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise the open-file limit to fit ``max_connections`` (plus the model's and the runtime's
    files), or lower the cap to what fits, saying so: past it, accepting fails in a loop."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to fit
        return limits
    need = limits.max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(1, soft - 256)
        _log(f"--max-connections {limits.max_connections} lowered to {fitted}: the open-file limit is {soft}")
        return replace(limits, max_connections=fitted)
    return limits


def _draining_server(config, frontends=()):
    """uvicorn's server, except that a SIGTERM/SIGINT it drained gracefully ends with exit code 0
    instead of being re-raised afterwards (which would kill the process by that signal), and
    that ``frontends`` (the gRPC server) start in its event loop once the app has, and begin
    to drain on the same signal."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        failure: Exception | None = None

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                if hasattr(self, "_captured_signals"):
                    self._captured_signals.clear()

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            for frontend in frontends if not self.should_exit else ():
                try:
                    await frontend.start()
                except ResNet50Error as exc:  # e.g. the gRPC port was taken during the model load
                    self.failure, self.should_exit = exc, True
                    return

        def handle_exit(self, sig, frame):
            for frontend in frontends:
                frontend.drain()
            super().handle_exit(sig, frame)

    return DrainingServer(config)
