"""The supported (device, backend, precision) combinations, as one table.

It drives ``ResNet50.load``'s validation, the CLI's choices and ``--help``, and ``resnet50
info``. ``backend="auto"`` picks, among the installed backends that run the precision on the
device, the one with the highest measured throughput.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from resnet50.core.errors import BackendUnavailableError, InvalidInputError

#: Where :attr:`Option.images_per_second` was measured (``benchmarks/cpu_bench.py``).
MEASURED_ON = "bench infer, batch 8, 2-core AMD EPYC Zen 4 (AVX-512 VNNI/BF16), synthetic weights"


@dataclass(frozen=True)
class Option:
    """One runnable combination and what it needs."""

    device: str
    backend: str
    precision: str
    extra: str | None  # the pip extra that installs the backend (None: a base dependency)
    module: str  # the import that shows the backend is installed
    images_per_second: float | None  # measured (see MEASURED_ON); None where not measured here
    streams: bool = True  # several independent model runs at once (the CPU backends)
    spin_wait: bool = False  # busy-waiting inference threads (ONNX Runtime)
    note: str = ""

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    @property
    def install_hint(self) -> str:
        return f"pip install 'resnet50[{self.extra}]'" if self.extra else "pip install resnet50"

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "extra": self.extra,
            "installed": self.installed,
            "images_per_second": self.images_per_second,
            "note": self.note,
        }


OPTIONS: tuple[Option, ...] = (
    Option("cpu", "onnxruntime", "fp32", None, "onnxruntime", 25.0, spin_wait=True, note="exact"),
    Option("cpu", "onnxruntime", "int8", None, "onnxruntime", 90.0, spin_wait=True, note="QDQ, u8 x s8"),
    Option("cpu", "openvino", "fp32", "openvino", "openvino", 24.0),
    Option("cpu", "openvino", "bf16", "openvino", "openvino", 50.0, note="needs AVX-512 BF16 or AMX for speed"),
    Option("cpu", "openvino", "int8", "openvino", "openvino", 99.7, note="the ONNX Runtime int8 file"),
    Option("cuda", "torch", "fp32", "cuda", "torch", None, streams=False, note="TF32"),
    Option("cuda", "torch", "fp16", "cuda", "torch", None, streams=False, note="channels-last, CUDA graphs"),
    Option("cuda", "torch", "bf16", "cuda", "torch", None, streams=False),
)

DEFAULT_DEVICE = "cpu"
DEFAULT_BACKEND = "auto"
DEFAULT_PRECISION = "fp32"


def _unique(field: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(getattr(o, field) for o in OPTIONS))


DEVICES = _unique("device")
BACKENDS = _unique("backend")
PRECISIONS = _unique("precision")


def _listing(options) -> str:
    by_backend: dict[tuple[str, str], list[str]] = {}
    for o in options:
        by_backend.setdefault((o.device, o.backend), []).append(o.precision)
    return "; ".join(f"{d} {b}: {'/'.join(p)}" for (d, b), p in by_backend.items())


def _spin_wait_error() -> InvalidInputError:
    backends = " and ".join(dict.fromkeys(o.backend for o in OPTIONS if o.spin_wait))
    devices = " and ".join(dict.fromkeys(o.device.upper() for o in OPTIONS if o.spin_wait))
    return InvalidInputError(f"spin_wait applies to the {backends} backend on the {devices} only")


def choose(
    device: str = DEFAULT_DEVICE,
    backend: str | None = DEFAULT_BACKEND,
    precision: str = DEFAULT_PRECISION,
    spin_wait: bool = False,
) -> Option:
    """The option for this combination (``backend`` "auto" or None: the fastest installed one
    that offers what is asked, e.g. ``spin_wait``), or an error that lists what is supported."""
    backend = backend or DEFAULT_BACKEND
    for value, allowed, what in (
        (device, DEVICES, "device"),
        (backend, (DEFAULT_BACKEND, *BACKENDS), "backend"),
        (precision, PRECISIONS, "precision"),
    ):
        if value not in allowed:
            raise InvalidInputError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    on_device = [o for o in OPTIONS if o.device == device]
    if backend != DEFAULT_BACKEND:
        matches = [o for o in on_device if o.backend == backend and o.precision == precision]
        if not matches:
            raise InvalidInputError(
                f"backend {backend!r} does not run precision {precision!r} on device {device!r}; "
                f"supported: {_listing(on_device)}"
            )
        if spin_wait and not matches[0].spin_wait:
            raise _spin_wait_error()
        return matches[0]
    candidates = [o for o in on_device if o.precision == precision]
    if not candidates:
        raise InvalidInputError(
            f"precision {precision!r} does not run on device {device!r}; supported: {_listing(on_device)}"
        )
    if spin_wait:
        candidates = [o for o in candidates if o.spin_wait]
        if not candidates:
            raise _spin_wait_error()
    installed = [o for o in candidates if o.installed]
    if not installed:
        hints = " or ".join(o.install_hint for o in candidates)
        raise BackendUnavailableError(f"precision {precision!r} on {device!r} needs a backend: {hints}")
    return max(installed, key=lambda o: o.images_per_second or 0.0)


def table() -> str:
    """The combinations as lines for ``--help`` and ``resnet50 info``."""
    rows = [f"  {'device':<6} {'backend':<12} {'precision':<9} {'img/s':>6}  {'install':<32} note"]
    for o in OPTIONS:
        speed = f"{o.images_per_second:g}" if o.images_per_second else "-"
        rows.append(f"  {o.device:<6} {o.backend:<12} {o.precision:<9} {speed:>6}  {o.install_hint:<32} {o.note}")
    return "\n".join(rows)
