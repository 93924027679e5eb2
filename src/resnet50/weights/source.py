"""Which model file to run, and which registry entry describes it.

Order: the ``model`` argument, else ``$RESNET50_MODEL``, else the named entry's fetched file,
else (nothing named) the fetched MLPerf file, else the synthetic-weights model. A file is
matched to its entry by checksum (MLPerf md5, torchvision sha256 prefix) or by our synthetic
marker; a file that matches none is "custom" and runs with the named entry's preprocessing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from resnet50.core import registry
from resnet50.core.cache import cache_dir, file_md5, file_sha256
from resnet50.core.errors import InvalidInputError, ModelFileError
from resnet50.core.files import is_torch_checkpoint
from resnet50.core.registry import Weights
from resnet50.weights.synthetic import DEFAULT_SEED, SYNTHETIC_VERSION, build_synthetic


def fetched_path(weights: Weights) -> Path:
    """Where ``resnet50 fetch --weights NAME`` puts an entry's file."""
    return cache_dir() / weights.name / weights.file.filename


def legacy_mlperf_path() -> Path:
    """Where earlier versions of ``resnet50 fetch`` put the MLPerf file."""
    return cache_dir() / "resnet50_v1.onnx"


def synthetic_path(seed: int = DEFAULT_SEED) -> Path:
    return cache_dir() / f"synthetic-v{SYNTHETIC_VERSION}-seed{seed}.onnx"


@dataclass(frozen=True)
class ModelSource:
    """A model file, the registry entry that describes it, and whether its checksum proves it."""

    path: Path
    weights: Weights
    origin: str  # how it was chosen: "argument", "RESNET50_MODEL", "cache" or "built"
    verified: bool  # the file is the entry's published file (checksum), or our synthetic model

    @property
    def md5(self) -> str:
        return file_md5(self.path)

    @property
    def kind(self) -> str:
        """What results say they came from: the entry's name when proven, else "custom"."""
        return self.weights.name if self.verified else "custom"

    @property
    def release(self) -> str | None:
        """The published file this is, by checksum, if any."""
        return self.weights.name if self.verified and not self.weights.synthetic else None

    @property
    def is_checkpoint(self) -> bool:
        return self.weights.format == "torch-state-dict"


def _marked_synthetic(path: Path) -> bool:
    """Whether an ONNX file carries our synthetic-weights marker (its metadata only is read)."""
    try:
        import onnx

        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:
        return False  # an unreadable file is reported by the loader's interface check
    return any(p.key == "resnet50.weights" and p.value == "synthetic" for p in model.metadata_props)


def _identify(path: Path, named: Weights | None, origin: str) -> ModelSource:
    """Match a user's file to its registry entry."""
    if is_torch_checkpoint(path):
        proven = registry.by_sha256(file_sha256(path))
        entry = named or proven
        if entry is None:
            choices = ", ".join(w.name for w in registry.REGISTRY.values() if w.format == "torch-state-dict")
            raise InvalidInputError(
                f"{path}: a PyTorch checkpoint whose preprocessing is not known; name it with --weights ({choices})"
            )
        if entry.format != "torch-state-dict":
            raise InvalidInputError(f"{path}: a PyTorch checkpoint, but weights {entry.name!r} are an ONNX file")
        return ModelSource(path, entry, origin, verified=proven is not None and proven.name == entry.name)
    proven = registry.by_md5(file_md5(path))
    if proven is None and _marked_synthetic(path):
        proven = registry.get("synthetic")
    if named and named.format != "onnx":
        raise InvalidInputError(f"{path}: weights {named.name!r} are a PyTorch checkpoint (.pth), not this file")
    if named and proven and named.name != proven.name and not named.synthetic:
        raise InvalidInputError(f"{path}: this file is {proven.name!r} (by checksum), not {named.name!r}")
    entry = proven or named or registry.get(registry.DEFAULT)
    return ModelSource(path, entry, origin, verified=proven is not None)


def _user_file(value: str | os.PathLike, origin: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found (from {origin})")
    return path


def _synthetic() -> ModelSource:
    path = synthetic_path()
    if path.is_file():
        return ModelSource(path, registry.get("synthetic"), "cache", verified=True)
    return ModelSource(build_synthetic(path), registry.get("synthetic"), "built", verified=True)


def _fetched(entry: Weights) -> Path | None:
    candidates = [fetched_path(entry)]
    if entry.format == "onnx":
        candidates.append(legacy_mlperf_path())
    return next(
        (p for p in candidates if p.is_file() and (entry.file.md5 is None or file_md5(p) == entry.file.md5)), None
    )


def resolve(model: str | os.PathLike | None = None, weights: str | Weights | None = None) -> ModelSource:
    """The model file to run and its registry entry (see the module docstring for the order)."""
    named = registry.get(weights) if weights else None
    if named is not None and named.synthetic:
        if model:
            raise InvalidInputError("weights 'synthetic' are built by the package; drop --model")
        return _synthetic()
    for value, origin in ((model, "argument"), (os.environ.get("RESNET50_MODEL"), "RESNET50_MODEL")):
        if value:
            return _identify(_user_file(value, origin), named, origin)
    if named is not None:
        path = _fetched(named)
        if path is None:
            raise ModelFileError(
                f"weights {named.name!r}: the file is not in the cache ({fetched_path(named)}); "
                f"run `resnet50 fetch --weights {named.name}` or give --model PATH ({named.file.url})"
            )
        return ModelSource(path, named, "cache", verified=True)
    for entry in (registry.get("mlperf-opset11"), registry.get("mlperf-opset8")):
        path = _fetched(entry)
        if path is not None:
            return ModelSource(path, entry, "cache", verified=True)
    return _synthetic()


_warned = False


def warn_if_synthetic(source: ModelSource) -> None:
    """Say once per process, on stderr, that results come from synthetic weights."""
    global _warned
    if source.weights.synthetic and not _warned:
        _warned = True
        real = registry.get(registry.DEFAULT)
        print(
            "resnet50: running on SYNTHETIC weights (labels and scores are meaningless; "
            f"the MLPerf weights score {real.metrics.top1}% top-1). Get the real file with `resnet50 fetch` "
            f"or from {real.file.url}, then use --model PATH or RESNET50_MODEL.",
            file=sys.stderr,
        )
