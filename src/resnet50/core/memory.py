"""Handing freed memory back to the system between the steps of one-off model builds."""

from __future__ import annotations

import ctypes
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    Building a model frees hundreds of MB of protobuf and tensor buffers; glibc keeps most of
    them mapped, so each step would start from the previous step's peak.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
