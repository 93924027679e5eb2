"""Calls that must not hang on special files: a blocked call fails the test instead."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest

WATCHDOG_S = 20  # far above any call it guards; only a hang reaches it


def release(fifo: str) -> None:
    """Open ``fifo`` for writing and close it: a reader blocked on it gets end-of-file."""
    with contextlib.suppress(OSError):  # nobody reads it any more
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def within(call, *args, fifos=(), **kwargs):
    """``call(*args, **kwargs)`` in a thread; a call still blocked after WATCHDOG_S fails the test
    (its FIFOs are then released, which lets a blocked reader go)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    if thread.is_alive():
        for fifo in fifos:
            release(fifo)
        thread.join(5)
        pytest.fail(f"{getattr(call, '__name__', call)} hung on a special file")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
