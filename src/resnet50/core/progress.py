"""Progress of long one-off work (building the synthetic model, calibrating int8), on stderr.

How it shows is set per call chain with :func:`progress_mode`: ``"bar"`` (a tqdm bar),
``"line"`` (one line saying what is being done) or ``"off"`` (nothing: the CLI's ``--json``).
Unset, it is a bar when stderr is a terminal and a line otherwise. The CLI sets it from
:func:`resnet50.cli.common.show_progress`, so library functions need no extra argument.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

MODES = ("bar", "line", "off")
_mode: ContextVar[str | None] = ContextVar("resnet50_progress_mode", default=None)


@contextmanager
def progress_mode(mode: str) -> Iterator[None]:
    """Show :func:`task` progress as ``mode`` ("bar", "line" or "off") inside the block."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)


class Task:
    """What :func:`task` yields: ``update(n)`` advances, ``stage(text)`` says which part runs."""

    def __init__(self, bar=None):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def stage(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)


@contextmanager
def task(what: str, total: int, unit: str = "step") -> Iterator[Task]:
    """Report ``what`` (e.g. "building the synthetic-weights model") while the block runs."""
    mode = _mode.get() or ("bar" if sys.stderr.isatty() else "line")
    if mode == "off":
        yield Task()
        return
    if mode == "line":
        print(f"resnet50: {what} ...", file=sys.stderr, flush=True)
        yield Task()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=f"resnet50: {what}", unit=unit, file=sys.stderr) as bar:
        yield Task(bar)
