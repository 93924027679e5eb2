"""What both Ray engines (batch on Ray Data, serve on Ray Serve) share: joining or starting a
Ray cluster, refusing a worker that loaded other weights than the driver, and the root cause
of a Ray failure in one line.

Imported only by code that runs on Ray, so ``ray`` stays an optional extra.
"""

from __future__ import annotations

import os
import re
import socket

from resnet50.core.errors import BackendUnavailableError, ModelFileError


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **init_options) -> bool:
    """Connect to ``address`` (or start a local Ray); return True when this call started it.

    ``init_options`` go to ``ray.init`` (e.g. ``log_to_driver``)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": True, **init_options}
    if address:
        check_reachable(address)
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        hint = (
            "; a cluster with token authentication (Ray's default) also needs RAY_AUTH_MODE=token here, "
            "and its token (`ray get-auth-token`) in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            if not os.environ.get("RAY_AUTH_MODE")
            else ""
        )
        raise BackendUnavailableError(f"cannot connect to the Ray cluster at {address}: {exc}{hint}") from None
    return True


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" and the like: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BackendUnavailableError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; start it with `ray start --head`"
        ) from None


def check_same_model(source, md5: str | None) -> None:
    """Refuse to run when this worker's model file (``ModelSource``) is not the driver's
    (``md5``): a node that resolves another file (no fetched MLPerf file there, say) would
    otherwise mix weights into the results."""
    if md5 and source.md5 != md5:
        raise ModelFileError(
            f"Ray worker on {socket.gethostname()} loaded {source.path} ({source.kind} weights, md5 "
            f"{source.md5}) but the driver runs md5 {md5}; give every node the same file "
            "(--model on a shared path, or resnet50 fetch on each node)"
        )


def failure_reason(exc: BaseException | str) -> str:
    """The root cause inside a Ray error (or its text): our own error's message when there is one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        match = re.match(r"resnet50\.(?:core\.)?errors\.\w+: (.*)", line)
        if match:
            return match.group(1)
    causes = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
    name = "unknown error" if isinstance(exc, str) else type(exc).__name__
    return (causes[-1] if causes else lines[0] if lines else name)[:500]
