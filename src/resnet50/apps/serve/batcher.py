"""Dynamic batching: concurrent requests merged into model runs, bounded admission.

Requests are admitted up to ``max_queue`` at a time (more get :class:`Overloaded`, which
the server answers with 503 and ``Retry-After``). Admitted tensors wait in one FIFO queue.
One inference thread per model stream (``ResNet50.load(streams=N)``) takes the oldest
waiting images: with one stream up to ``max_batch``, waiting at most ``max_wait_ms`` for
more while admitted requests are still being decoded (a lone request runs at once); with N
streams its 1/N share of what waits (at most ``max_batch``) at once. The event loop never
runs the model (the backends release the GIL).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from resnet50.apps.serve.metrics import Metrics


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
        self.lanes = max(1, getattr(getattr(model, "backend", None), "streams", 1))
        self.metrics = metrics or Metrics()
        self._pending: deque[_Item] = deque()  # guarded by _ready, like the counters below
        self._ready = threading.Condition()
        self._waiting_rows = 0
        self._stopping = False
        self._inflight = 0  # admitted requests not yet answered (touched on the event loop only)
        self._preparing = 0  # admitted requests still being read or decoded: worth waiting for
        self._images_per_s = 0.0  # recent throughput of all streams together, for Retry-After
        self._threads: list[threading.Thread] = []

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
        if ticket.preparing:  # it failed before submitting: a batch waiting for it need not
            self._submitted(ticket)
            with self._ready:
                self._ready.notify_all()
        self._inflight -= 1
        self.metrics.inflight.set(self._inflight)

    # --- inference ---
    def start(self) -> None:
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"resnet50-infer-{lane}", daemon=True)
            for lane in range(self.lanes)
        ]
        for thread in self._threads:
            thread.start()

    async def infer(
        self, tensor: np.ndarray, top_k: int = 5, ticket: Ticket | None = None, timing: dict | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``tensor`` (``[N,3,224,224]`` of the model's dtype) in shared batches; its outputs.

        ``timing``, when given, receives the ``queue`` and ``infer`` seconds and the largest
        ``batch`` its rows ran in (for the ``Server-Timing`` header)."""
        if self._stopping or not any(thread.is_alive() for thread in self._threads):
            raise RuntimeError("the inference threads are not running")
        loop = asyncio.get_running_loop()
        self._submitted(ticket)
        items = [
            _Item(tensor[start : start + self.max_batch], top_k, loop.create_future(), loop)
            for start in range(0, len(tensor), self.max_batch)
        ]
        with self._ready:
            self._pending.extend(items)
            self._waiting_rows += len(tensor)
            self.metrics.queue_depth.set(self._waiting_rows)
            self._ready.notify(len(items))
        parts = await asyncio.gather(*(item.future for item in items))
        if timing is not None:  # chunks are queued together: waiting ends when the first one runs
            first_start = min(i.started_at for i in items)
            timing["queue"] = first_start - items[0].queued_at
            timing["infer"] = max(i.started_at + i.run_seconds for i in items) - first_start
            timing["batch"] = max(i.batch_rows for i in items)
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _take(self, limit: int) -> tuple[int, int]:
        """How many of the oldest waiting items fit in ``limit`` rows (at least one), and their rows."""
        count = rows = 0
        for item in self._pending:
            if count and rows + len(item.tensor) > limit:
                break
            count, rows = count + 1, rows + len(item.tensor)
        return count, rows

    def _next_batch(self) -> list[_Item] | None:
        """Block until this thread has a batch to run; None once stopping with nothing left."""
        with self._ready:
            deadline = None
            while True:
                if not self._pending:  # nothing waiting (or another stream took it meanwhile)
                    if self._stopping:
                        return None
                    self._ready.wait()
                    deadline = None
                    continue
                if deadline is None:
                    deadline = time.perf_counter() + self.max_wait
                # With N streams each takes 1/N of the waiting rows, so a backlog is spread over
                # all of them instead of one stream running a long batch alone.
                share = min(self.max_batch, math.ceil(self._waiting_rows / self.lanes))
                count, rows = self._take(share)
                full = rows >= self.max_batch or count < len(self._pending)
                remaining = deadline - time.perf_counter()
                # One stream waits for more while a request still being decoded could fill the
                # batch; a lone request runs at once. Several streams never wait: the others take
                # whatever arrives next.
                if self.lanes > 1 or full or self._preparing <= 0 or remaining <= 0 or self._stopping:
                    break
                self._ready.wait(remaining)
            items = [self._pending.popleft() for _ in range(count)]
            self._waiting_rows -= rows
            self.metrics.queue_depth.set(self._waiting_rows)
            return items

    def _loop(self) -> None:
        while (items := self._next_batch()) is not None:
            self._run(items, sum(len(i.tensor) for i in items))

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
        rate = rows * self.lanes / seconds  # every stream runs at about this pace when all are busy
        self._images_per_s = rate if not self._images_per_s else 0.8 * self._images_per_s + 0.2 * rate
        offset = 0
        for item in items:
            item.started_at, item.run_seconds, item.batch_rows = start, seconds, rows
            n = len(item.tensor)
            part = {name: value[offset : offset + n] for name, value in outputs.items()}
            offset += n
            item.loop.call_soon_threadsafe(_settle, item.future, part, None)

    async def stop(self) -> None:
        """Answer everything queued, then end the inference threads."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
