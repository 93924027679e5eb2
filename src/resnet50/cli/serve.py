"""``resnet50 serve``: the HTTP server (``/v1/classify``, KServe v2, ``/metrics``, web page) and optionally gRPC."""

from __future__ import annotations

import argparse

from resnet50.cli.common import add_model_options, load_model
from resnet50.core.errors import BackendUnavailableError, InvalidInputError
from resnet50.core.extras import require

#: What the ``serve`` extra installs and the server imports.
SERVE_MODULES = ("uvicorn", "fastapi")

_TUNING = [  # (flag, type, default, metavar, help) of the batching, limit and shutdown options
    ("--max-batch", int, None, "B", "images per model run (default: 8 with one stream, 1 with several)"),
    ("--max-wait-ms", float, 5.0, "MS", "one stream: how long a batch waits to fill (default 5)"),
    ("--max-queue", int, 64, "N", "requests in flight at once; more get 503 with Retry-After (default 64)"),
    ("--max-body-mb", float, 32.0, "MB", "largest request body; more get 413 (default 32)"),
    ("--max-megapixels", float, 100.0, "MP", "largest image a request may declare; more get 413 (default 100)"),
    ("--workers", int, None, "N", "decode/preprocess threads (default: cores, at most 4)"),
    ("--graceful-timeout", float, 30.0, "S", "on SIGTERM, wait at most this long for in-flight requests (default 30)"),
    ("--header-timeout", float, 10.0, "S", "request headers must arrive within this; else 408, closed (default 10)"),
    ("--body-timeout", float, 60.0, "S", "a request body must arrive whole within this; else 408, closed (default 60)"),
    ("--keep-alive-timeout", float, 5.0, "S", "an idle keep-alive connection closes after this (default 5)"),
    ("--max-header-kb", float, 16.0, "KB", "largest request headers; more get 431, closed (default 16)"),
    ("--max-connections", int, 512, "N", "open connections; a request past it gets 503 with Retry-After (default 512)"),
    ("--grpc-port", int, None, "PORT", "also serve the Open Inference Protocol over gRPC here (0: a free port)"),
    ("--grpc-max-message-mb", float, 32.0, "MB", "largest gRPC message (default 32: a batch of 32 FP32 images)"),
]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="HTTP inference server with dynamic batching, KServe v2 endpoints and a web page",
        description="Serve the model over HTTP (and, with --grpc-port, the Open Inference Protocol over gRPC). "
        "SIGTERM or Ctrl-C answers every accepted request, then exits.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    for flag, kind, default, metavar, text in _TUNING:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    add_model_options(parser, streams=True)
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
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
        (args.header_timeout > 0, f"--header-timeout must be positive, got {args.header_timeout}"),
        (args.body_timeout > 0, f"--body-timeout must be positive, got {args.body_timeout}"),
        (args.keep_alive_timeout > 0, f"--keep-alive-timeout must be positive, got {args.keep_alive_timeout}"),
        (args.max_header_kb >= 1, f"--max-header-kb must be at least 1, got {args.max_header_kb}"),
        (args.max_connections >= 1, f"--max-connections must be at least 1, got {args.max_connections}"),
        (
            args.grpc_port is None or 0 <= args.grpc_port <= 65535,
            f"--grpc-port must be in 0..65535, got {args.grpc_port}",
        ),
        (
            args.grpc_port in (None, 0) or args.grpc_port != args.port,
            f"--grpc-port must differ from --port ({args.port})",
        ),
        (args.grpc_max_message_mb > 0, f"--grpc-max-message-mb must be positive, got {args.grpc_max_message_mb}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidInputError(message)


def run(args: argparse.Namespace) -> int:
    from resnet50.apps.pipeline import default_workers
    from resnet50.apps.serve.native_stderr import filter_native_stderr
    from resnet50.apps.serve.run import ServeSettings, bind, serve, serving_defaults

    _check(args)
    filter_native_stderr(show_noise=args.log_level == "debug")  # before the model load: its runtime logs too
    for module in SERVE_MODULES:  # fail before the slow model load
        require(module, "serve", "resnet50 serve")
    try:
        require("python_multipart", "serve", "resnet50 serve")
    except BackendUnavailableError:  # python-multipart before 0.0.13 is only `multipart`
        require("multipart", "serve", "resnet50 serve")
    if args.grpc_port is not None:
        from resnet50.apps.serve.grpc import load_grpc

        load_grpc()  # the grpc extra is there: fail before the slow model load, like a taken port
        if args.grpc_port:
            try:
                bind(args.host, args.grpc_port).close()
            except InvalidInputError as exc:
                raise InvalidInputError(f"--grpc-port: {exc}") from None
    sock = bind(args.host, args.port)
    args.streams, args.max_batch = serving_defaults(args.streams, args.max_batch, args.threads, args.device)
    # With batches of one, OpenVINO compiles for exactly that shape (faster); other backends ignore it.
    model = load_model(args, batch_size=1 if args.max_batch == 1 else None)
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_mb=args.max_body_mb,
        max_megapixels=args.max_megapixels,
        workers=args.workers or default_workers(),
        graceful_timeout=args.graceful_timeout,
        log_level=args.log_level,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_header_kb=args.max_header_kb,
        max_connections=args.max_connections,
        grpc_port=args.grpc_port,
        grpc_max_message_mb=args.grpc_max_message_mb,
    )
    serve(model, sock, settings)
    return 0
