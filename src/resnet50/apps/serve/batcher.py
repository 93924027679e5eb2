"""Dynamic batching: concurrent requests merged into model runs, bounded admission.

Requests are admitted up to ``max_queue`` at a time (more get :class:`Overloaded`, which
the server answers with 503 and ``Retry-After``). Admitted requests wait in a ring, and a
batch takes one row from each in turn (round-robin), so a request of one image sent next
to one of 128 waits about one batch, not for all 128. One inference thread per model stream
(``ResNet50.load(streams=N)``) forms the batches: with one stream up to ``max_batch`` rows,
waiting at most ``max_wait_ms`` for more while admitted requests are still being decoded (a
lone request runs at once); with N streams its 1/N share of what waits (at most
``max_batch``) at once. The event loop never runs the model (the backends release the GIL).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from resnet50.apps.serve.metrics import Metrics


class Overloaded(Exception):
    """The admission limit is reached; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, limit: int):
        super().__init__(f"server busy: {limit} requests already in flight; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Request:
    """One :meth:`Batcher.infer` call: its rows, and what has been taken and answered of them.

    Every field after ``queued_at`` is guarded by the batcher's lock (inference threads write them)."""

    tensor: np.ndarray
    top_k: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    convert: Callable[[np.ndarray], np.ndarray] | None = None
    queued_at: float = field(default_factory=time.perf_counter)
    taken: int = 0  # rows handed to a batch so far
    answered: int = 0  # rows whose outputs are back
    parts: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # first row -> outputs of those rows
    first_start: float = math.inf  # when its first rows began to run
    last_end: float = 0.0  # when its last rows finished
    batch_rows: int = 0  # the largest batch its rows ran in
    finished: bool = False  # answered, failed or withdrawn: later results are dropped

    @property
    def rows(self) -> int:
        return len(self.tensor)


class Ticket:
    """One admitted request; remembers whether its images are still being prepared."""

    __slots__ = ("preparing",)

    def __init__(self):
        self.preparing = True


class Batcher:
    """Merges concurrent :meth:`infer` calls into batches of at most ``max_batch`` images, fairly."""

    def __init__(self, model, *, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64, metrics=None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1 and max_wait_ms at least 0")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.lanes = max(1, getattr(getattr(model, "backend", None), "streams", 1))
        self.metrics = metrics or Metrics()
        self._ring: deque[_Request] = deque()  # requests with rows not yet taken; guarded by _ready
        self._ready = threading.Condition()
        self._waiting_rows = 0
        self._stopping = False
        self._inflight = 0  # admitted requests not yet answered (touched on the event loop only)
        self._preparing = 0  # admitted requests still being decoded: worth waiting for
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
        self,
        tensor: np.ndarray,
        top_k: int = 5,
        ticket: Ticket | None = None,
        timing: dict | None = None,
        convert: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``tensor`` (``[N,3,224,224]`` of the model's dtype) in shared batches; its outputs.

        ``convert``, when given, turns each slice of ``tensor`` into the model's input as its
        batch is formed (e.g. uint8 crops to float32: a large request then holds its images at a
        quarter of the size). ``timing``, when given, receives the ``queue`` and ``infer``
        seconds and the largest ``batch`` its rows ran in (for the ``Server-Timing`` header).
        Cancelling the call withdraws the rows not yet run."""
        if self._stopping or not any(thread.is_alive() for thread in self._threads):
            raise RuntimeError("the inference threads are not running")
        if len(tensor) == 0:
            raise ValueError("an inference request needs at least one row")
        loop = asyncio.get_running_loop()
        self._submitted(ticket)
        request = _Request(tensor, top_k, loop.create_future(), loop, convert)
        with self._ready:
            self._ring.append(request)
            self._waiting_rows += request.rows
            self.metrics.queue_depth.set(self._waiting_rows)
            self._ready.notify(min(self.lanes, request.rows))
        try:
            outputs = await request.future
        except asyncio.CancelledError:
            self._withdraw(request)
            raise
        if timing is not None:
            timing["queue"] = request.first_start - request.queued_at
            timing["infer"] = request.last_end - request.first_start
            timing["batch"] = request.batch_rows
        return outputs

    def _withdraw(self, request: _Request) -> None:
        """Drop what is left of a request nobody waits for any more (its client went away)."""
        with self._ready:
            request.finished = True
            if request in self._ring:
                self._ring.remove(request)
                self._waiting_rows -= request.rows - request.taken
                self.metrics.queue_depth.set(self._waiting_rows)

    def _take(self, limit: int) -> list[tuple[_Request, int, int]]:
        """Up to ``limit`` waiting rows, one row per request in turn from the head of the ring:
        a request of 128 images and one of 1 share a batch instead of the 1 waiting for all 128."""
        grants = [0] * len(self._ring)
        left = limit
        while left:
            before = left
            for i, request in enumerate(self._ring):
                if left and request.taken + grants[i] < request.rows:
                    grants[i] += 1
                    left -= 1
            if left == before:  # every waiting row is taken
                break
        return [(r, r.taken, r.taken + g) for r, g in zip(self._ring, grants) if g]

    def _next_batch(self) -> list[tuple[_Request, int, int]] | None:
        """Block until this thread has a batch to run; None once stopping with nothing left."""
        with self._ready:
            deadline = None
            while True:
                if not self._ring:  # nothing waiting (or another stream took it meanwhile)
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
                slices = self._take(share)
                rows = sum(stop - start for _, start, stop in slices)
                full = rows >= self.max_batch or rows < self._waiting_rows
                remaining = deadline - time.perf_counter()
                # One stream waits for more while a request still being decoded could fill the
                # batch; a lone request runs at once. Several streams never wait: the others take
                # whatever arrives next.
                if self.lanes > 1 or full or self._preparing <= 0 or remaining <= 0 or self._stopping:
                    break
                self._ready.wait(remaining)
            for request, _, stop in slices:
                request.taken = stop
                if stop == request.rows:
                    self._ring.remove(request)
            if self._ring and self._ring[0] is slices[0][0]:
                self._ring.rotate(-1)  # the next batch starts with the next request
            self._waiting_rows -= rows
            self.metrics.queue_depth.set(self._waiting_rows)
            return slices

    def _loop(self) -> None:
        while (slices := self._next_batch()) is not None:
            self._run(slices)

    def _run(self, slices: list[tuple[_Request, int, int]]) -> None:
        start = time.perf_counter()
        rows = sum(stop - first for _, first, stop in slices)
        try:
            parts = [r.tensor[a:b] if r.convert is None else r.convert(r.tensor[a:b]) for r, a, b in slices]
            tensor = parts[0] if len(parts) == 1 else np.concatenate(parts)
            del parts
            outputs = self.model.run(tensor, max(r.top_k for r, _, _ in slices))
        except BaseException as exc:  # handed to every request in the batch, never lost in this thread
            with self._ready:
                for request, _, _ in slices:
                    self._finish(request, None, exc)
            return
        end = time.perf_counter()
        seconds = end - start
        self.metrics.observe_batch(rows, seconds)
        rate = rows * self.lanes / seconds  # every stream runs at about this pace when all are busy
        self._images_per_s = rate if not self._images_per_s else 0.8 * self._images_per_s + 0.2 * rate
        offset = 0
        with self._ready:
            for request, first, stop in slices:
                n = stop - first
                if not request.finished:
                    request.parts[first] = {name: value[offset : offset + n] for name, value in outputs.items()}
                    request.answered += n
                    request.first_start = min(request.first_start, start)
                    request.last_end = max(request.last_end, end)
                    request.batch_rows = max(request.batch_rows, rows)
                    if request.answered == request.rows:
                        self._finish(request, _joined(request.parts), None)
                offset += n

    def _finish(self, request: _Request, result, exc: BaseException | None) -> None:
        """Settle ``request`` once (lock held): its outputs, or the error of one of its batches."""
        if request.finished:
            return
        request.finished = True
        request.parts = {}
        if request in self._ring:  # failed with rows still waiting: they need not run
            self._ring.remove(request)
            self._waiting_rows -= request.rows - request.taken
            self.metrics.queue_depth.set(self._waiting_rows)
        request.loop.call_soon_threadsafe(_settle, request.future, result, exc)

    async def stop(self) -> None:
        """Answer everything queued, then end the inference threads."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []


def _joined(parts: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of a request's rows, in row order, from the batches they ran in."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    ordered = [parts[first] for first in sorted(parts)]
    return {name: np.concatenate([p[name] for p in ordered]) for name in ordered[0]}


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
