"""Where the model comes from: the MLPerf file when present, synthetic weights otherwise.

Synthetic weights are seeded and deterministic, He-scaled so activations stay near unit
range through all 53 layers, with the classifier fitted to the pooled features of
generated photos so that different images get different, well separated classes (see
:func:`_fit_classifier`). Their labels mean nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .constants import FP32_TOP1, MLPERF_FILES, MLPERF_MD5S
from .errors import ModelFileError

SYNTHETIC_VERSION = 2
DEFAULT_SEED = 0
_PIXEL_STD = 58.0  # std of ImageNet pixels after mean subtraction: scales the stem
_RESIDUAL_GAIN = 0.35  # keeps the residual stream's variance from doubling at each block
_LOGIT_STD = 3.5  # spread of the synthetic logits: top-1 scores of 0.1-0.9, like a trained model
_CLASSIFIER_IMAGES = 48  # generated photos whose pooled features place the classifier
_CLASSIFIER_RANK = 16  # principal feature directions the classifier reads


def cache_dir() -> Path:
    """``$RESNET50_HOME``, else ``$XDG_CACHE_HOME/resnet50``, else ``~/.cache/resnet50``."""
    if os.environ.get("RESNET50_HOME"):
        return Path(os.environ["RESNET50_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnet50"


def mlperf_path() -> Path:
    """Where ``resnet50 fetch`` puts the MLPerf file."""
    return cache_dir() / "resnet50_v1.onnx"


def synthetic_path(seed: int = DEFAULT_SEED) -> Path:
    return cache_dir() / f"synthetic-v{SYNTHETIC_VERSION}-seed{seed}.onnx"


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file, remembered in a side file keyed by size and mtime."""
    path = Path(path)
    stat = path.stat()
    key = f"{stat.st_size}:{stat.st_mtime_ns}"
    memo = path.with_name(path.name + ".md5.json")
    try:
        saved = json.loads(memo.read_text())
        if saved.get("key") == key:
            return saved["md5"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    md5 = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only folder only costs a rehash next time
        memo.write_text(json.dumps({"key": key, "md5": md5}))
    return md5


def synthetic_weights(seed: int = DEFAULT_SEED) -> dict[str, np.ndarray]:
    """Seeded folded conv/fc weights for ResNet50 v1.5 (classifier not yet centred)."""
    from .graph import FEATURES, conv_specs, weight_shapes

    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for spec in conv_specs():
        fan_in = spec.in_channels * spec.kernel * spec.kernel
        std = np.sqrt(2.0 / fan_in)
        if spec.role == "stem":
            std /= _PIXEL_STD
        elif spec.role == "expand":
            std *= _RESIDUAL_GAIN
        shape = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        weights[f"{spec.name}.weight"] = rng.standard_normal(shape, np.float32) * np.float32(std)
        weights[f"{spec.name}.bias"] = rng.normal(0.0, 0.05, spec.out_channels).astype(np.float32)
    weights["fc.weight"] = rng.standard_normal(weight_shapes()["fc.weight"], np.float32) / np.float32(np.sqrt(FEATURES))
    weights["fc.bias"] = np.zeros(weight_shapes()["fc.bias"], np.float32)
    return weights


def _fit_classifier(weights: dict[str, np.ndarray], seed: int) -> None:
    """Point the classifier at the directions in which generated photos differ most.

    A random classifier on raw ReLU features sees mostly their common mean: every image
    gets the same class, and small numeric errors (int8) flip the ranking. Reading the
    top principal directions of the pooled features of generated photos, whitened, gives
    image-dependent, well separated logits, as a trained classifier has.
    """
    import onnxruntime as ort

    from .graph import build_model, features_model
    from .preprocess import preprocess
    from .samples import synthetic_batch

    model = features_model(build_model(weights))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    tensor, _ = preprocess(synthetic_batch(_CLASSIFIER_IMAGES, seed=10_000))
    features = np.concatenate(
        [session.run(None, {session.get_inputs()[0].name: tensor[i : i + 8]})[0] for i in range(0, len(tensor), 8)]
    )
    features = features.astype(np.float64)
    mean = features.mean(axis=0)
    _, singular, directions = np.linalg.svd(features - mean, full_matrices=False)
    stds = singular[:_CLASSIFIER_RANK] / np.sqrt(len(features) - 1)
    mixing = np.random.default_rng(seed + 1).standard_normal((weights["fc.weight"].shape[0], _CLASSIFIER_RANK))
    w = (_LOGIT_STD / np.sqrt(_CLASSIFIER_RANK)) * mixing @ (directions[:_CLASSIFIER_RANK] / stds[:, None])
    # float16-rounded so that last-bit differences between CPUs rarely change the file.
    weights["fc.weight"] = w.astype(np.float16).astype(np.float32)
    weights["fc.bias"] = (-(w @ mean)).astype(np.float16).astype(np.float32)


def build_synthetic(path: str | os.PathLike, seed: int = DEFAULT_SEED) -> Path:
    """Write the synthetic-weights model to ``path`` atomically and return the path."""
    import onnx

    from .graph import build_model

    weights = synthetic_weights(seed)
    _fit_classifier(weights, seed)
    metadata = {"resnet50.weights": "synthetic", "resnet50.seed": str(seed), "resnet50.version": str(SYNTHETIC_VERSION)}
    model = build_model(weights, metadata=metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    onnx.save(model, tmp)
    tmp.replace(path)
    return path


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
