"""``resnet50 serve``: run the HTTP server (``/v1/classify``, KServe v2, ``/metrics``, web page)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import socket
import sys

from .common import add_model_options

_TUNING = [  # (flag, type, default, metavar, help) of the batching, limit and shutdown options
    ("--max-batch", int, None, "B", "images per model run (default: 8 with one stream, 1 with several)"),
    ("--max-wait-ms", float, 5.0, "MS", "one stream: how long a batch waits to fill (default 5)"),
    ("--max-queue", int, 64, "N", "requests in flight at once; more get 503 with Retry-After (default 64)"),
    ("--max-body-mb", float, 32.0, "MB", "largest request body; more get 413 (default 32)"),
    ("--max-megapixels", float, 100.0, "MP", "largest image a request may declare; more get 413 (default 100)"),
    ("--workers", int, None, "N", "decode/preprocess threads (default: cores, at most 4)"),
    ("--graceful-timeout", float, 30.0, "S", "on SIGTERM, wait at most this long for in-flight requests (default 30)"),
]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="HTTP inference server with dynamic batching, KServe v2 endpoints and a web page",
        description="Serve the model over HTTP. SIGTERM or Ctrl-C answers every accepted request, then exits.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    for flag, kind, default, metavar, text in _TUNING:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    add_model_options(parser, streams=True)
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from ..errors import InvalidInputError

    checks = [
        (args.max_batch is None or args.max_batch >= 1, f"--max-batch must be at least 1, got {args.max_batch}"),
        (args.max_wait_ms >= 0, f"--max-wait-ms must be at least 0, got {args.max_wait_ms}"),
        (args.max_queue >= 1, f"--max-queue must be at least 1, got {args.max_queue}"),
        (args.max_body_mb > 0, f"--max-body-mb must be positive, got {args.max_body_mb}"),
        (args.max_megapixels > 0, f"--max-megapixels must be positive, got {args.max_megapixels}"),
        (args.workers is None or args.workers >= 1, f"--workers must be at least 1, got {args.workers}"),
        (args.streams is None or args.streams >= 1, f"--streams must be at least 1, got {args.streams}"),
        (0 <= args.port <= 65535, f"--port must be in 0..65535, got {args.port}"),
        (args.graceful_timeout > 0, f"--graceful-timeout must be positive, got {args.graceful_timeout}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidInputError(message)


def serving_defaults(
    streams: int | None, max_batch: int | None, threads: int | None = None, device: str = "cpu"
) -> tuple[int, int]:
    """The model streams and max batch that ``serve`` uses unless told otherwise.

    Two streams of half the threads each, one image per run: a 2-thread run stalls whenever
    decoding or HTTP work preempts either thread, and a 1-thread stream gains ~10% at most
    from batches, while a batch makes its first image wait for the last
    (``benchmarks/serve_configs.py``, 36 req/s: p99 81-84 ms against 127-364 ms for one stream
    with batches of up to 8)."""
    from ..cpu import physical_cores

    if streams is None:
        streams = 1 if device == "cuda" else min(2, threads or physical_cores())
    if max_batch is None:
        max_batch = 8 if streams == 1 else 1
    return streams, max_batch


def _bind(host: str, port: int) -> socket.socket:
    """Claim the address before the (slow) model load, so a taken port fails at once."""
    from ..errors import InvalidInputError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: without it the response body waits for the ACK of
        # the headers, which a keep-alive client delays ~40 ms (measured: 64 -> 20 ms per request).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    from ..errors import BackendUnavailableError

    _check(args)
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        raise BackendUnavailableError(f"resnet50 serve needs {exc.name}: pip install 'resnet50[serve]'") from None
    from ..pipeline import default_workers
    from .common import load_model

    sock = _bind(args.host, args.port)
    args.streams, args.max_batch = serving_defaults(args.streams, args.max_batch, args.threads, args.device)
    # With batches of one, OpenVINO compiles for exactly that shape (faster); other backends ignore it.
    model = load_model(args, batch_size=1 if args.max_batch == 1 else None)
    workers = args.workers or default_workers()
    app = create_app(
        model,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_mb=args.max_body_mb,
        max_megapixels=args.max_megapixels,
        workers=workers,
    )
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        access_log=args.log_level in ("info", "debug"),
        lifespan="on",
    )
    print(
        f"resnet50 serve: listening on http://{shown}:{port} ({model.precision}, weights {model.weights}, "
        f"{model.backend.streams} model streams, max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, "
        f"max queue {args.max_queue}, {workers} decode threads)",
        file=sys.stderr,
        flush=True,
    )
    if not ipaddress.ip_address(host).is_loopback:
        print(
            f"resnet50 serve: warning: bound to {host}, not loopback: other machines can reach this server",
            file=sys.stderr,
        )
    # Everything loaded so far lives as long as the server: out of the collector's sight, a
    # full collection under load scans only what requests create (one took 32 ms before).
    gc.collect()
    gc.freeze()
    _draining_server(config).run(sockets=[sock])
    return 0


def _draining_server(config):
    """uvicorn's server, except that a SIGTERM/SIGINT it drained gracefully ends with exit code 0
    instead of being re-raised afterwards (which would kill the process by that signal)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                if hasattr(self, "_captured_signals"):
                    self._captured_signals.clear()

    return DrainingServer(config)
