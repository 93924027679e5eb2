"""Which model file to run: the user's, the fetched MLPerf file, or the synthetic-weights model."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from resnet50.core.cache import cache_dir, file_md5
from resnet50.core.constants import FP32_TOP1, MLPERF_FILES, MLPERF_MD5S
from resnet50.core.errors import ModelFileError
from resnet50.weights.synthetic import DEFAULT_SEED, SYNTHETIC_VERSION, build_synthetic


def mlperf_path() -> Path:
    """Where ``resnet50 fetch`` puts the MLPerf file."""
    return cache_dir() / "resnet50_v1.onnx"


def synthetic_path(seed: int = DEFAULT_SEED) -> Path:
    return cache_dir() / f"synthetic-v{SYNTHETIC_VERSION}-seed{seed}.onnx"


@dataclass(frozen=True)
class ModelSource:
    """A model file and what kind of weights it holds."""

    path: Path
    weights: str  # "synthetic", "mlperf" or "custom"
    origin: str  # how it was chosen: "argument", "RESNET50_MODEL", "cache" or "built"

    @property
    def md5(self) -> str:
        return file_md5(self.path)

    @property
    def release(self) -> str | None:
        """Which MLPerf release the file is, by checksum, if any."""
        return MLPERF_MD5S.get(self.md5)


def _kind_of(path: Path) -> str:
    if file_md5(path) in MLPERF_MD5S:
        return "mlperf"
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4
        meta = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).get_modelmeta()
        if meta.custom_metadata_map.get("resnet50.weights") == "synthetic":
            return "synthetic"
    except Exception:
        pass  # an unreadable file is reported by the loader's interface check
    return "custom"


def resolve(model: str | os.PathLike | None = None) -> ModelSource:
    """The model file to run: ``model`` argument, else ``$RESNET50_MODEL``, else the fetched
    MLPerf file, else the synthetic-weights model (built and cached on first use)."""
    for value, origin in ((model, "argument"), (os.environ.get("RESNET50_MODEL"), "RESNET50_MODEL")):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ModelFileError(f"{path}: model file not found (from {origin})")
            return ModelSource(path, _kind_of(path), origin)
    fetched = mlperf_path()
    if fetched.is_file():
        return ModelSource(fetched, "mlperf", "cache")
    path = synthetic_path()
    if path.is_file():
        return ModelSource(path, "synthetic", "cache")
    return ModelSource(build_synthetic(path), "synthetic", "built")


_warned = False


def warn_if_synthetic(source: ModelSource) -> None:
    """Say once per process, on stderr, that results come from synthetic weights."""
    global _warned
    if source.weights == "synthetic" and not _warned:
        _warned = True
        url = MLPERF_FILES["opset11"][0]
        print(
            "resnet50: running on SYNTHETIC weights (labels and scores are meaningless; "
            f"fp32 MLPerf weights score {FP32_TOP1}% top-1). Get the real file with `resnet50 fetch` "
            f"or from {url}, then use --model PATH or RESNET50_MODEL.",
            file=sys.stderr,
        )
