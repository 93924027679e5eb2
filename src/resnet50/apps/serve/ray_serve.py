"""``resnet50 serve --engine ray``: the HTTP app as a Ray Serve deployment, one model per replica.

Each replica is a deployment replica with FastAPI ingress whose ASGI app is
:func:`~resnet50.apps.serve.app.create_app` itself, built once the replica has loaded its model
(``__serve_build_asgi_app__``), so every endpoint (``/v1/classify``, KServe v2, ``/metrics``,
the page), limit and error is the single-process server's. Every response carries the
``x-resnet50-replica`` header, and ``/metrics`` the replica, node and pid of the replica that
answered.

Batching happens inside each replica, in the app's own :class:`~resnet50.apps.serve.batcher.Batcher`
rather than ``@serve.batch``: the handlers, the admission limit (503 + Retry-After), the split
of multi-image requests, the model streams, ``Server-Timing`` and the metrics then stay one
code path for both engines, and inference runs in the batcher's threads while the replica's
event loop keeps reading and decoding requests.

Ray Serve's proxy answers a request whose replica died mid-way with a bare 500, and one that
arrives while the application is starting or stopping with a 404. The proxy middleware here
(installed through Ray Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, handed to the
proxies in the controller's environment) turns both into a JSON 503 with ``Retry-After``: the
request was not served and may be sent again.

Imported only for ``--engine ray``; needs the ``ray`` and ``serve`` extras.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray import serve

from resnet50.apps.ray_cluster import check_same_model, ensure_ray, failure_reason
from resnet50.apps.serve.run import ServeSettings
from resnet50.core.errors import BackendUnavailableError, InvalidInputError

APP_NAME = "resnet50"
REPLICA_HEADER = "x-resnet50-replica"
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = f"{__name__}:proxy_middlewares"
RETRY_AFTER_S = 1  # a lost replica's requests can go to another one at once


@dataclass(frozen=True)
class Scaling:
    """How many replicas, and what each reserves: ``replicas``, or ``autoscale=(min, max)``
    with ``target_ongoing`` requests per replica; ``cpus`` (and ``gpus``) per replica."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    target_ongoing: float = 2.0
    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def minimum(self) -> int:
        return self.autoscale[0] if self.autoscale else self.replicas

    def describe(self) -> str:
        if self.autoscale:
            low, high = self.autoscale
            return f"{low}-{high} replicas (autoscaled, target {self.target_ongoing:g} ongoing requests each)"
        return f"{self.replicas} replica{'s' if self.replicas != 1 else ''}"


def deployment_options(scaling: Scaling, settings: ServeSettings) -> dict:
    """``serve.deployment`` options: the replica count or autoscaling, resources, limits.

    A replica takes up to ``max_queue`` requests at once (its batcher admits that many, as the
    single-process server does); ``max_queue`` more may wait at each proxy while no replica has
    room (during a restart, say), beyond which the proxy answers 503."""
    options = {
        "ray_actor_options": {"num_cpus": scaling.cpus, **({"num_gpus": scaling.gpus} if scaling.gpus else {})},
        "max_ongoing_requests": settings.max_queue,
        "max_queued_requests": settings.max_queue,
        "graceful_shutdown_timeout_s": settings.graceful_timeout,
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
    }
    if scaling.autoscale:
        low, high = scaling.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": max(low, 1),
            "max_replicas": high,
            "target_ongoing_requests": scaling.target_ongoing,
        }
    else:
        options["num_replicas"] = scaling.replicas
    return options


# --- the replica ---
class Replica:
    """One replica: loads the model once (``load`` holds the :meth:`ResNet50.load` arguments),
    refuses a model file other than the driver's (``md5``), then serves the app."""

    def __init__(self, load: dict, md5: str | None, settings: ServeSettings):
        from resnet50.api.model import ResNet50

        self.model = ResNet50.load(**load)
        check_same_model(self.model.source, md5)
        self.settings = settings
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        from resnet50.apps.serve.app import create_app

        s = self.settings
        app = create_app(
            self.model,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            max_body_mb=s.max_body_mb,
            max_megapixels=s.max_megapixels,
            workers=s.workers,
            body_timeout=s.body_timeout,
            log=lambda message: print(f"resnet50 serve replica {self.replica}: {message}", file=sys.stderr, flush=True),
        )
        app.metrics.info.update({"replica": self.replica, "node": socket.gethostname(), "pid": str(os.getpid())})
        gc.collect()  # what is loaded now lives as long as the replica (see run.serve)
        gc.freeze()
        return ReplicaHeader(app, self.replica)


class ReplicaHeader:
    """ASGI wrapper: every response says which replica answered (``x-resnet50-replica``)."""

    def __init__(self, app, replica: str):
        self.app, self.state = app, app.state
        self._header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_replica(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self._header]}
            await send(message)

        await self.app(scope, receive, send_with_replica)


# --- the proxy ---
class NoReplicaAs503:
    """Proxy ASGI middleware: a request no replica answered gets a JSON 503 with ``Retry-After``.

    That is a request whose replica died or was stopped mid-way (Ray's proxy answers a bare
    500), or one that arrived while the application was not deployed, i.e. starting or shutting
    down (Ray's proxy answers 404: every path belongs to this application). Both were not
    served and may be sent again. Answers from a replica carry its header and pass unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = replaced = False

        async def filtering_send(message):
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                replaced = message["status"] in (404, 500) and REPLICA_HEADER.encode() not in names
            if not replaced:
                await send(message)

        try:
            await self.app(scope, receive, filtering_send)
        except Exception:
            if started and not replaced:
                raise
        if not started or replaced:
            with contextlib.suppress(Exception):  # the client may be gone
                await _send_unavailable(send)


async def _send_unavailable(send) -> None:
    body = json.dumps(
        {
            "error": "no model replica answered this request (one stopped mid-request, or the deployment "
            f"is starting or shutting down); retry after {RETRY_AFTER_S} s"
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """Called by each Ray Serve proxy at start (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    from starlette.middleware import Middleware

    return [Middleware(NoReplicaAs503)]


# --- the driver ---
def start_serve(host: str, port: int) -> None:
    """Start Ray Serve's proxies on ``host:port`` (or check that a running Serve uses them).

    Bound to loopback, one proxy on the head node (the driver's, with ``--address auto``)
    serves; bound to an outside address, every node with a replica gets one, for a load
    balancer in front of them."""
    loopback = is_loopback(host)
    env = {PROXY_CALLBACK_ENV: PROXY_CALLBACK}
    if loopback:  # the one proxy spreads requests over all nodes' replicas, not its own node's first
        env |= {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_SERVE_PROXY_PREFER_LOCAL_AZ_ROUTING": "0"}
    serve.start(
        proxy_location="HeadOnly" if loopback else "EveryNode",
        http_options={"host": host, "port": port},
        controller_options={"runtime_env": {"env_vars": env}},
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    from ray.serve.context import _get_global_client

    config = _get_global_client().http_config  # a Serve already running keeps its own options
    if (config.host, config.port) != (host, port):
        raise InvalidInputError(
            f"Ray Serve already runs on this cluster with its HTTP proxy on {config.host}:{config.port}; "
            f"serve there (--host {config.host} --port {config.port}) or stop it first (`serve shutdown`)"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine only."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def deploy(
    load: dict,
    md5: str | None,
    settings: ServeSettings,
    scaling: Scaling,
    *,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> None:
    """Deploy the replicas as application ``name`` and wait until they all serve.

    A replica that cannot start (another model file than the driver's ``md5``, a bad option)
    fails the deployment with one :class:`BackendUnavailableError` naming the cause."""
    deployment = serve.deployment(serve.ingress()(Replica), name=name, **deployment_options(scaling, settings))
    try:
        serve.run(deployment.bind(load, md5, settings), name=name, route_prefix=route_prefix)
    except RuntimeError as exc:
        reason = _deployment_failure(name) or failure_reason(exc)
        with contextlib.suppress(Exception):
            serve.delete(name)
        raise BackendUnavailableError(f"the Ray Serve deployment failed: {reason}") from None


def check_name_free(name: str = APP_NAME) -> None:
    """Refuse to replace an application of the same name that someone else deployed."""
    if name in serve.status().applications:
        raise InvalidInputError(
            f"a Ray Serve application named {name!r} already runs on this cluster; stop it first "
            f"(`serve shutdown`, or SIGTERM to the resnet50 serve that started it)"
        )


def _deployment_failure(name: str) -> str | None:
    """The root cause Ray Serve recorded for a failed application (a replica's traceback)."""
    with contextlib.suppress(Exception):
        app = serve.status().applications[name]
        for deployment in app.deployments.values():
            if deployment.message:
                return failure_reason(deployment.message)
        return failure_reason(app.message) if app.message else None
    return None


def replica_counts(name: str = APP_NAME) -> dict[str, int]:
    """Replicas of application ``name`` by state (``RUNNING``, ``STARTING``, ...)."""
    app = serve.status().applications.get(name)
    counts: dict[str, int] = {}
    for deployment in app.deployments.values() if app else ():
        for state, n in deployment.replica_states.items():
            key = str(getattr(state, "value", state))
            if n:
                counts[key] = counts.get(key, 0) + n
    return counts


def check_cpus(scaling: Scaling, started: bool, log: Callable[[str], None]) -> None:
    """Replicas that cannot all be placed: refused on a Ray started here (Ray would wait for
    them forever); on a joined cluster, where nodes may still join, said in a warning."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    need = scaling.minimum * scaling.cpus
    if need <= total:
        return
    each = f"{scaling.cpus:g} CPU{'' if scaling.cpus == 1 else 's'}"
    what = f"{scaling.minimum} replica{'' if scaling.minimum == 1 else 's'} of {each} need {need:g} CPUs"
    if started:
        raise InvalidInputError(
            f"{what} but this machine's Ray has {total:g}; use fewer --replicas or --threads, "
            "or join a cluster with --address"
        )
    log(f"warning: {what} but the cluster has {total:g} now; Ray Serve waits for nodes to join")


def shutdown(started: bool, name: str = APP_NAME) -> None:
    """Stop application ``name`` (its replicas finish the requests they hold first); then Ray,
    with Serve in it, if this process started it (``started``); else Serve, if no other
    application is left on the cluster, and disconnect."""
    import ray

    if not ray.is_initialized():
        return
    with contextlib.suppress(Exception):
        serve.delete(name)
    if started:  # (serve.shutdown() first would only add Ray's complaint about its killed controller)
        ray.shutdown()
        return
    with contextlib.suppress(Exception):
        if not serve.status().applications:
            serve.shutdown()
    ray.shutdown()  # disconnects; the cluster stays up


class _Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def _stop_on_signals() -> None:
    """The first SIGTERM/SIGINT raises :class:`_Stop` in the main thread; later ones are ignored.

    Installed after ``ray.init``, whose native failure handler would otherwise take SIGTERM
    and kill this process without shutting anything down."""

    def stop(signum, frame):
        _ignore_signals()
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _quiet_ray_logs() -> None:
    """Ray's and Serve's INFO lines (cluster start, app ready, ...) stay out of the terminal;
    this command prints its own."""
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(
    load: dict,
    md5: str | None,
    settings: ServeSettings,
    scaling: Scaling,
    *,
    host: str,
    port: int,
    address: str | None = None,
    describe: str = "",
    log: Callable[[str], None] | None = None,
) -> None:
    """Serve on Ray until SIGTERM/SIGINT: start a local Ray (or join ``address``), deploy,
    report replica changes, then shut the deployment down (and Ray, when started here)."""
    import ray

    log = log or (lambda message: print(f"resnet50 serve: {message}", file=sys.stderr, flush=True))
    started = deployed = False
    try:
        _quiet_ray_logs()
        # Without --address or RAY_ADDRESS, a new local Ray ("local": not one a `ray start` left
        # running, nor a stale address of one), stopped again at the end.
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        started = ensure_ray(address, log_to_driver=False, logging_level=logging.ERROR) and address == "local"
        _quiet_ray_logs()
        _stop_on_signals()
        check_cpus(scaling, started, log)
        start_serve(host, port)
        check_name_free()
        deployed = True  # from here on, what shutdown() deletes is ours
        deploy(load, md5, settings, scaling)
        shown = f"[{host}]" if ":" in host else host
        log(
            f"listening on http://{shown}:{port} (Ray Serve on the Ray at "
            f"{ray.get_runtime_context().gcs_address}, {scaling.describe()}{describe})"
        )
        if not is_loopback(host):
            log(f"warning: bound to {host}, not loopback: other machines can reach this server")
        _watch(log)
    except _Stop as stop:
        log(f"{stop}: shutting the deployment down")
    finally:
        _ignore_signals()
        if deployed:
            shutdown(started)
        if ray.is_initialized():
            ray.shutdown()  # stops a Ray started here; only disconnects from a joined one
    log("stopped" + ("; the Ray this command started is down" if started else ""))


def _watch(log: Callable[[str], None], period: float = 2.0) -> None:
    """Until a signal: say when the replicas change (one died, a replacement serves, autoscaling)."""
    last = replica_counts()
    while True:
        time.sleep(period)
        with contextlib.suppress(Exception):
            now = replica_counts()
            if now != last:
                log("replicas: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(now.items())))
                last = now


def pick_port(host: str, port: int) -> int:
    """``port``, checked to be free on ``host`` (before the slow model load), or a free one for 0."""
    from resnet50.apps.serve.run import bind

    with contextlib.closing(bind(host, port)) as sock:
        return sock.getsockname()[1]
