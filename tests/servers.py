"""Real servers for the serving tests: ``resnet50 serve`` as a subprocess on a loopback port, and the
app in-process behind an httpx ASGI client; and the strict JSON reader their answers must pass."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")


class ServerProcess:
    """``python -m resnet50 serve --port 0 ARGS`` with its stderr in a file; knows its URL."""

    def __init__(self, log_dir: Path, *args: str, start_timeout: float = 120.0):
        self.log = log_dir / f"serve-{time.monotonic_ns()}.log"
        self.responses = 0  # responses this helper got while waiting for readiness
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "resnet50", "serve", "--port", "0", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=os.environ,
            )
        deadline = time.monotonic() + start_timeout
        match = None
        while match is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start in {start_timeout}s:\n{self.stderr}")
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.stderr)
            time.sleep(0.05)
        self.url = match.group(1)
        while True:
            try:
                response = httpx.get(f"{self.url}/v2/health/ready", timeout=5)
                self.responses += 1
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server never became ready:\n{self.stderr}")
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def expected_predictions(model, paths, top_k: int = 5) -> list[list[dict]]:
    """What ``/v1/classify`` must answer for each of ``paths``: ``model``'s own top-k, as JSON."""
    tensor, ctx = model.preprocess([str(p) for p in paths])
    outputs = model.run(tensor)
    return [
        [{"label": p.label, "class_id": p.class_id, "score": p.score} for p in c.predictions]
        for c in model.postprocess(outputs, ctx, top_k)
    ]


def strict_json(text: str | bytes):
    """JSON as the standard defines it: no NaN or Infinity."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


class AppClient:
    """The server's app in-process, on an event loop thread of its own and with its lifespan
    (batcher and decode threads): the code a server runs, minus the HTTP protocol. A request
    that takes longer than ``timeout`` raises ``TimeoutError`` (a hang)."""

    def __init__(self, app, timeout: float = 60.0):
        self.app, self.timeout = app, timeout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="app-client", daemon=True)
        self.thread.start()
        self._lifespan = app.app.router.lifespan_context(app.app)
        self.call(self._lifespan.__aenter__())
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("127.0.0.1", 4242))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://test")

    def call(self, coro, timeout: float | None = None):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout or self.timeout)
        except TimeoutError:
            future.cancel()
            raise

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self.call(self.client.request(method, url, **kwargs))

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self.call(self.client.aclose())
        self.call(self._lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()
