"""``resnet50 serve``: the HTTP server (``/v1/classify``, KServe v2, ``/metrics``, web page) and optionally gRPC."""

from __future__ import annotations

import argparse
import os

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
    _add_ray_options(parser)
    parser.set_defaults(func=run)


def _add_ray_options(parser) -> None:
    parser.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="local: this process; ray: Ray Serve replicas"
    )
    ray = parser.add_argument_group(
        "Ray Serve engine (--engine ray; --threads, --streams and the limits above are per replica)"
    )
    ray.add_argument(
        "--address", metavar="ADDR", help="Ray cluster to join, e.g. auto or HOST:6379 (default: a new local Ray)"
    )
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, metavar="N", help="model replicas (default 1)")
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="replicas autoscaled between MIN and MAX")
    ray.add_argument(
        "--target-ongoing",
        type=float,
        metavar="N",
        help="--autoscale: requests in flight per replica that Ray Serve scales towards (default: max batch, >= 2)",
    )


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
    from resnet50.apps.serve.native_stderr import filter_native_stderr
    from resnet50.apps.serve.run import bind, serve, serving_defaults

    _check(args)
    ray_only = [flag for flag, value in _ray_flags(args) if value is not None]
    if ray_only and args.engine != "ray":
        raise InvalidInputError(f"{', '.join(ray_only)} {'needs' if len(ray_only) == 1 else 'need'} --engine ray")
    if args.engine == "ray" and args.grpc_port is not None:
        raise InvalidInputError("--grpc-port serves from one process; with --engine ray use HTTP")
    for module in SERVE_MODULES:  # fail before the slow model load
        require(module, "serve", "resnet50 serve")
    try:
        require("python_multipart", "serve", "resnet50 serve")
    except BackendUnavailableError:  # python-multipart before 0.0.13 is only `multipart`
        require("multipart", "serve", "resnet50 serve")
    if args.engine == "ray":
        return _run_ray(args)
    filter_native_stderr(show_noise=args.log_level == "debug")  # before the model load: its runtime logs too
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
    serve(model, sock, _settings(args))
    return 0


def _settings(args: argparse.Namespace):
    from resnet50.apps.pipeline import default_workers
    from resnet50.apps.serve.run import ServeSettings

    return ServeSettings(
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


# --- --engine ray ---
def _ray_flags(args: argparse.Namespace) -> list[tuple[str, object]]:
    return [
        ("--address", args.address),
        ("--replicas", args.replicas),
        ("--autoscale", args.autoscale),
        ("--target-ongoing", args.target_ongoing),
    ]


def parse_autoscale(text: str) -> tuple[int, int]:
    """``MIN:MAX`` -> (MIN, MAX), with 0 <= MIN <= MAX and MAX >= 1."""
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise InvalidInputError(f"--autoscale must be MIN:MAX replicas, e.g. 1:4, got {text!r}")
    low_n, high_n = int(low), int(high)
    if high_n < 1 or low_n > high_n:
        raise InvalidInputError(f"--autoscale {text}: need 0 <= MIN <= MAX and MAX >= 1")
    return low_n, high_n


def _run_ray(args: argparse.Namespace) -> int:
    """Ray Serve replicas of the same app: check the flags, load the model here once (to fail
    fast, fill the cache the local replicas read, and learn the md5 every replica must match),
    then hand over to :func:`resnet50.apps.serve.ray_serve.run`."""
    from resnet50.apps.serve.run import serving_defaults
    from resnet50.cli.common import model_options
    from resnet50.core.cpu import physical_cores

    autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
    if args.replicas is not None and args.replicas < 1:
        raise InvalidInputError(f"--replicas must be at least 1, got {args.replicas}")
    if args.target_ongoing is not None and (args.target_ongoing <= 0 or autoscale is None):
        raise InvalidInputError("--target-ongoing must be positive and needs --autoscale")
    if args.threads is not None and args.threads < 1:
        raise InvalidInputError(f"--threads must be at least 1, got {args.threads}")
    try:
        from resnet50.apps.serve import ray_serve
    except ImportError as exc:
        raise BackendUnavailableError(
            f"resnet50 serve --engine ray needs {exc.name}: pip install 'resnet50[serve,ray]'"
        ) from None
    most = autoscale[1] if autoscale else args.replicas or 1
    # Each replica gets its share of this machine's cores unless told; Ray reserves that many CPUs for it.
    args.threads = args.threads or max(1, physical_cores() // most)
    args.streams, args.max_batch = serving_defaults(args.streams, args.max_batch, args.threads, args.device)
    if args.address and args.port == 0:
        raise InvalidInputError("--port 0 (any free port) is for a local Ray; with --address give the port")
    # A local Ray's proxy binds here: check the port now, before the slow model load (0 picks one).
    port = args.port if args.address else ray_serve.pick_port(args.host, args.port)
    batch_size = 1 if args.max_batch == 1 else None
    model = load_model(args, batch_size=batch_size)
    source = model.source
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    describe = (
        f"; per replica: {threads}, {model.backend.streams} model streams, "
        f"max batch {args.max_batch}, {model.precision}, weights {model.weights}"
    )
    del model  # the replicas load their own
    # A file the user named travels as its path; the default (fetched, else synthetic) is resolved on
    # each node, and the md5 keeps every replica on the driver's weights.
    named = source.origin in ("argument", "RESNET50_MODEL")
    load = {**model_options(args), "batch_size": batch_size, "model": os.fspath(source.path) if named else None}
    scaling = ray_serve.Scaling(
        replicas=args.replicas or 1,
        autoscale=autoscale,
        target_ongoing=args.target_ongoing or float(max(2, args.max_batch)),
        cpus=float(args.threads),
        gpus=1.0 if args.device == "cuda" else 0.0,
    )
    ray_serve.run(
        load, source.md5, _settings(args), scaling, host=args.host, port=port, address=args.address, describe=describe
    )
    return 0
