"""What every backend provides: the :class:`Backend` interface, its stream pool and error wording."""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from resnet50.core.errors import first_line  # noqa: F401  (backends import it from here)
from resnet50.graph.interface import TensorSpec


class Backend(ABC):
    """A loaded model that maps input arrays to named output arrays.

    ``run`` may be called from several threads; up to ``streams`` calls compute at once
    (each on its own share of the threads), the others wait for a free stream."""

    name: str = "backend"
    threads: int = 1
    streams: int = 1

    def __init__(self, model_path: str):
        self.model_path = model_path

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; releases the GIL while computing; thread-safe."""

    def describe(self) -> dict:
        """Facts for ``resnet50 info``."""
        return {"backend": self.name}

    def _cpu_facts(self, version: str) -> dict:
        """What a CPU backend's ``describe`` starts with."""
        return {"backend": self.name, "backend_version": version, "threads": self.threads, "streams": self.streams}


class StreamPool:
    """Lends one of a backend's runners (sessions, infer requests) per call, so that at most
    one call uses each and at most that many model runs compute at once."""

    def __init__(self, runners: Sequence):
        self.runners = tuple(runners)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for runner in runners:
            self._idle.put(runner)

    @contextmanager
    def take(self) -> Iterator:
        runner = self._idle.get()
        try:
            yield runner
        finally:
            self._idle.put(runner)
