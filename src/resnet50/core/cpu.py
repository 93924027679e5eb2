"""What this CPU offers for inference (the instruction sets int8 and bf16 kernels need)."""

from __future__ import annotations

import os
import platform
from functools import lru_cache

_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def physical_cores() -> int:
    """Cores this process may use (affinity-aware); ONNX Runtime's default is the same count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """Model name, usable cores and the inference-relevant instruction sets."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"name": name, "cores": physical_cores(), "features": [f for f in _FEATURES if f in flags]}
