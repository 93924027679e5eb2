"""Dynamic batching: concurrent requests merged into one model run, bounded admission.

Requests are admitted up to ``max_queue`` at a time (more get :class:`Overloaded`, which
the server answers with 503 and ``Retry-After``). Admitted tensors wait in a queue; one
inference thread takes the first, waits at most ``max_wait_ms`` for more (only while other
admitted requests are still being decoded, so a lone request runs at once), runs up to
``max_batch`` images at once and hands each request its rows. The event loop never runs
the model (ONNX Runtime releases the GIL in the worker thread).
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .metrics import Metrics


class Overloaded(Exception):
    """The admission limit is reached; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, limit: int):
        super().__init__(f"server busy: {limit} requests already in flight; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Item:
    tensor: np.ndarray
    top_k: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0  # when its batch began to run
    run_seconds: float = 0.0  # how long that batch ran
    batch_rows: int = 0


_STOP = object()


class Ticket:
    """One admitted request; remembers whether its images are still being prepared."""

    __slots__ = ("preparing",)

    def __init__(self):
        self.preparing = True


class Batcher:
    """Merges concurrent :meth:`infer` calls into batches of at most ``max_batch`` images."""

    def __init__(self, model, *, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64, metrics=None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1 and max_wait_ms at least 0")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight = 0  # admitted requests not yet answered (touched on the event loop only)
        self._waiting_rows = 0
        self._preparing = 0  # admitted requests still being read or decoded: worth waiting for
        self._lock = threading.Lock()
        self._images_per_s = 0.0  # recent throughput, for Retry-After
        self._thread: threading.Thread | None = None

    # --- admission (event loop) ---
    @property
    def inflight(self) -> int:
        return self._inflight

    def admit(self) -> Ticket:
        """Count one request in, or raise :class:`Overloaded` when ``max_queue`` are in flight."""
        if self._inflight >= self.max_queue:
            rate = self._images_per_s or 1.0
            raise Overloaded(min(60, max(1, math.ceil(self._inflight / rate))), self.max_queue)
        self._inflight += 1
        self._preparing += 1
        self.metrics.inflight.set(self._inflight)
        return Ticket()

    def _submitted(self, ticket: Ticket | None) -> None:
        if ticket is not None and ticket.preparing:
            ticket.preparing = False
            self._preparing -= 1

    def release(self, ticket: Ticket) -> None:
        """The request of ``ticket`` is answered (or failed)."""
        self._submitted(ticket)
        self._inflight -= 1
        self.metrics.inflight.set(self._inflight)

    # --- inference ---
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="resnet50-infer", daemon=True)
        self._thread.start()

    async def infer(
        self, tensor: np.ndarray, top_k: int = 5, ticket: Ticket | None = None, timing: dict | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``tensor`` (``[N,3,224,224]`` of the model's dtype) in shared batches; its outputs.

        ``timing``, when given, receives the ``queue`` and ``infer`` seconds and the largest
        ``batch`` its rows ran in (for the ``Server-Timing`` header)."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the inference thread is not running")
        loop = asyncio.get_running_loop()
        self._submitted(ticket)
        items = [
            _Item(tensor[start : start + self.max_batch], top_k, loop.create_future(), loop)
            for start in range(0, len(tensor), self.max_batch)
        ]
        for item in items:
            self._put(item)
        parts = await asyncio.gather(*(item.future for item in items))
        if timing is not None:  # chunks are queued together: waiting ends when the first one runs
            first_start = min(i.started_at for i in items)
            timing["queue"] = first_start - items[0].queued_at
            timing["infer"] = max(i.started_at + i.run_seconds for i in items) - first_start
            timing["batch"] = max(i.batch_rows for i in items)
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _put(self, item: _Item) -> None:
        with self._lock:
            self._waiting_rows += len(item.tensor)
            self.metrics.queue_depth.set(self._waiting_rows)
        self._queue.put(item)

    def _took(self, items: list[_Item]) -> None:
        with self._lock:
            self._waiting_rows -= sum(len(i.tensor) for i in items)
            self.metrics.queue_depth.set(self._waiting_rows)

    def _loop(self) -> None:
        carry = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            items, rows = [first], len(first.tensor)
            deadline = time.perf_counter() + self.max_wait
            while rows < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    # Wait for more only while admitted requests are still being decoded: an
                    # idle server runs a lone request at once instead of waiting max_wait_ms.
                    remaining = deadline - time.perf_counter()
                    if self._preparing <= 0 or remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is _STOP or rows + len(item.tensor) > self.max_batch:
                    carry = item
                    break
                items.append(item)
                rows += len(item.tensor)
            self._took(items)
            self._run(items, rows)

    def _run(self, items: list[_Item], rows: int) -> None:
        start = time.perf_counter()
        try:
            tensor = items[0].tensor if len(items) == 1 else np.concatenate([i.tensor for i in items])
            outputs = self.model.run(tensor, max(i.top_k for i in items))
        except BaseException as exc:  # handed to every waiting request, never lost in this thread
            for item in items:
                item.loop.call_soon_threadsafe(_settle, item.future, None, exc)
            return
        seconds = time.perf_counter() - start
        self.metrics.observe_batch(rows, seconds)
        self._images_per_s = (
            rows / seconds if not self._images_per_s else 0.8 * self._images_per_s + 0.2 * rows / seconds
        )
        offset = 0
        for item in items:
            item.started_at, item.run_seconds, item.batch_rows = start, seconds, rows
            n = len(item.tensor)
            part = {name: value[offset : offset + n] for name, value in outputs.items()}
            offset += n
            item.loop.call_soon_threadsafe(_settle, item.future, part, None)

    async def stop(self) -> None:
        """Answer everything queued, then end the inference thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
