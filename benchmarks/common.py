"""What every benchmark script shares: where results go, the machine they were measured on,
writing the JSON and its PNG chart, the command-line pieces, a timed loop and medians.

One copy here, so that every ``benchmarks/results/*.json`` records the same machine facts in
the same form and every chart is drawn the same way (matplotlib's Agg backend, no display).
The scripts import it as ``common`` (they run as ``python benchmarks/NAME.py``, which puts this
folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TESTS = HERE.parent / "tests"

# Distributions whose version changes a figure; those not installed are left out.
VERSIONED = (
    "resnet50",
    "numpy",
    "onnxruntime",
    "openvino",
    "opencv-python",
    "opencv-python-headless",
    "torch",
    "ray",
    "mlcommons-loadgen",
)


# ---- results folder, machine facts, JSON and chart ----------------------------------------


def default_out(name: str) -> Path:
    """``benchmarks/results/NAME.json``: where a script writes unless ``--out`` says otherwise."""
    return RESULTS / f"{name}.json"


def utc_now() -> str:
    """The time as every result records it: ``2026-11-27 00:29 UTC``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def versions() -> dict[str, str]:
    """Versions of the installed distributions among :data:`VERSIONED`."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    """Where and when a result was measured: date, CPU (name, usable cores, the instruction sets
    the int8/bf16 kernels use), platform, Python and package versions."""
    from resnet50.core.cpu import cpu_info

    return {
        "date": utc_now(),
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def header(name: str) -> dict[str, Any]:
    """The first keys of every result: which benchmark, and :func:`machine`."""
    return {"benchmark": name, "machine": machine()}


def write_json(path: Path, payload: Any) -> Path:
    """``payload`` as indented JSON at ``path`` (folders made), with a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def save(out: Path, result: Mapping[str, Any], chart: Callable[[Any, Path], None] | None = None) -> Path | None:
    """Write ``result`` to ``out`` and, with ``chart``, draw it next to it as ``out`` with
    ``.png``; say on stderr what was written. Returns the PNG's path (None without a chart)."""
    write_json(out, result)
    png = out.with_suffix(".png") if chart else None
    if chart:
        chart(result, png)
    log(f"wrote {out}" + (f" and {png}" if png else ""))
    return png


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend: charts are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Lay ``fig`` out, write it to ``path`` as every chart is written (same dpi), and close it."""
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        pyplot().close(fig)


@contextmanager
def figure(path: Path, nrows: int = 1, ncols: int = 1, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """``(figure, axes)`` from ``plt.subplots(nrows, ncols, **subplots)``; when the block ends the
    figure goes through :func:`save_figure` (closed unsaved if the block raises)."""
    plt = pyplot()
    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, path)


# ---- command line --------------------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the script's whole docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_out(p: argparse.ArgumentParser, name: str) -> None:
    """``--out PATH``, default ``benchmarks/results/NAME.json``; a chart goes beside it as .png."""
    p.add_argument(
        "--out",
        type=Path,
        default=default_out(name),
        help=f"result JSON (default: benchmarks/results/{name}.json); a chart is written beside it as .png",
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is less than 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as JSON values (paths as strings), to record how a result was made."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ---- output --------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the JSON summary."""
    print(message, file=sys.stderr, flush=True)


def print_json(summary: Any) -> None:
    """The run's summary on stdout, as indented JSON."""
    print(json.dumps(summary, indent=1))


# ---- timing --------------------------------------------------------------------------------


@dataclass
class Timed:
    """What :func:`run_for` measured: items done, seconds, and each timed call's seconds."""

    items: int
    seconds: float
    latencies_s: list[float]

    @property
    def per_s(self) -> float:
        return self.items / self.seconds


def run_for(step: Callable[[], int], duration: float, warmup: float = 0.0) -> Timed:
    """Call ``step`` (it returns how many items it did) untimed for ``warmup`` s, then timed until
    ``duration`` s have passed (at least once), keeping every timed call's latency."""
    until = time.perf_counter() + warmup
    while time.perf_counter() < until:
        step()
    items, latencies = 0, []
    start = now = time.perf_counter()
    while not latencies or now - start < duration:
        t0 = time.perf_counter()
        items += step()
        now = time.perf_counter()
        latencies.append(now - t0)
    return Timed(items, now - start, latencies)


def per_item_ms(func: Callable[[Any], object], items: list, rounds: int = 1) -> float:
    """Median over ``rounds`` of the mean ms per item of ``func`` over all ``items``."""
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            func(item)
        means.append((time.perf_counter() - start) / len(items) * 1000)
    return median(means)


def median(values: Iterable[float], ndigits: int = 3) -> float:
    """The median of ``values``, rounded to ``ndigits`` decimals."""
    import numpy as np

    return round(float(np.median(list(values))), ndigits)


def median_percentiles(runs: list[Mapping[str, float]], ndigits: int = 3) -> dict[str, float]:
    """Per key (``p50``, ``p90``, ...), the median over runs of latency percentiles."""
    return {q: median((run[q] for run in runs), ndigits) for q in runs[0]} if runs else {}


def reference() -> ModuleType:
    """``tests/reference.py``: the MLPerf reference harness's preprocessing, copied verbatim."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import reference as module

    return module
