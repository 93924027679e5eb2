"""The synthetic-weights model: the exact v1.5 graph with seeded weights, for machines without the real file.

Synthetic weights are seeded and deterministic, He-scaled so activations stay near unit
range through all 53 layers, with the classifier fitted to the pooled features of
generated photos so that different images get different, well separated classes (see
:func:`_fit_classifier`). Their labels mean nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from resnet50.core.constants import NUM_CLASSES
from resnet50.core.memory import release_free_memory
from resnet50.core.progress import Task, task
from resnet50.core.samples import synthetic_batch
from resnet50.graph.io import write_model
from resnet50.graph.spec import FEATURES, build_model, conv_specs, features_model, weight_shapes
from resnet50.processing.preprocess import preprocess

SYNTHETIC_VERSION = 2
DEFAULT_SEED = 0
_PIXEL_STD = 58.0  # std of ImageNet pixels after mean subtraction: scales the stem
_RESIDUAL_GAIN = 0.35  # keeps the residual stream's variance from doubling at each block
_LOGIT_STD = 3.5  # spread of the synthetic logits: top-1 scores of 0.1-0.9, like a trained model
_CLASSIFIER_IMAGES = 48  # generated photos whose pooled features place the classifier
_CLASSIFIER_RANK = 16  # principal feature directions the classifier reads
_FIT_BATCH = 2  # photos per run while fitting: activations stay small


def synthetic_weights(seed: int = DEFAULT_SEED) -> dict[str, np.ndarray]:
    """Seeded folded conv/fc weights for ResNet50 v1.5 (classifier not yet centred)."""
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


def _features_session(seed: int):
    """An ONNX Runtime session of the feature extractor with the seeded weights.

    The model goes to ONNX Runtime as a file written piece by piece (:func:`write_model`), and
    Python's copy of the weights is gone before the session is built: the session, which holds
    its own reordered copy, never coexists with another one.
    """
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="resnet50-synthetic-") as scratch:
        path = Path(scratch) / "features.onnx"
        write_model(features_model(build_model(synthetic_weights(seed)), copy=False), path)
        release_free_memory()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def _fit_classifier(seed: int, progress: Task | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The classifier (weight, bias) that reads the directions in which generated photos differ most.

    A random classifier on raw ReLU features sees mostly their common mean: every image
    gets the same class, and small numeric errors (int8) flip the ranking. Reading the
    top principal directions of the pooled features of generated photos, whitened, gives
    image-dependent, well separated logits, as a trained classifier has. Photos go through
    in small batches, which keeps the activations small (the features are the same bit for bit).
    """
    session = _features_session(seed)
    name = session.get_inputs()[0].name
    photos = synthetic_batch(_CLASSIFIER_IMAGES, seed=10_000)
    parts = []
    for start in range(0, len(photos), _FIT_BATCH):
        parts.append(session.run(None, {name: preprocess(photos[start : start + _FIT_BATCH])[0]})[0])
        if progress is not None:
            progress.update(len(parts[-1]))
    del session
    features = np.concatenate(parts).astype(np.float64)
    mean = features.mean(axis=0)
    _, singular, directions = np.linalg.svd(features - mean, full_matrices=False)
    stds = singular[:_CLASSIFIER_RANK] / np.sqrt(len(features) - 1)
    mixing = np.random.default_rng(seed + 1).standard_normal((NUM_CLASSES, _CLASSIFIER_RANK))
    w = (_LOGIT_STD / np.sqrt(_CLASSIFIER_RANK)) * mixing @ (directions[:_CLASSIFIER_RANK] / stds[:, None])
    # float16-rounded so that last-bit differences between CPUs rarely change the file.
    return w.astype(np.float16).astype(np.float32), (-(w @ mean)).astype(np.float16).astype(np.float32)


def build_synthetic(path: str | os.PathLike, seed: int = DEFAULT_SEED) -> Path:
    """Write the synthetic-weights model to ``path`` atomically and return the path.

    Takes seconds, once per cache: said on stderr (a bar on a terminal, see
    :mod:`resnet50.core.progress`). The seeded weights are generated twice, for the session that
    fits the classifier and for the file, rather than held through the session (peak memory).
    """
    with task("building the synthetic-weights model (first run only)", _CLASSIFIER_IMAGES + 1) as progress:
        progress.stage("fitting the classifier")
        fc_weight, fc_bias = _fit_classifier(seed, progress)
        release_free_memory()  # the fitting session's buffers, before the model is laid out again
        progress.stage("writing")
        weights = synthetic_weights(seed)
        weights["fc.weight"], weights["fc.bias"] = fc_weight, fc_bias
        metadata = {
            "resnet50.weights": "synthetic",
            "resnet50.seed": str(seed),
            "resnet50.version": str(SYNTHETIC_VERSION),
        }
        model = build_model(weights, metadata=metadata)
        del weights  # the model holds its own copy
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write_model(model, tmp)
        tmp.replace(path)
        progress.update()
    return path
