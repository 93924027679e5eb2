"""Accuracy without LoadGen: top-1/top-5 against ``val_map.txt``, and one precision against another.

Ranking is over the 1000 foreground classes, as :func:`resnet50.processing.postprocess.postprocess`
does (the MLPerf harness instead counts an ArgMax on "background" as wrong; the two differ
only for images whose top class is background). ``--compare`` measures how faithfully a
model (e.g. int8) follows a reference (e.g. fp32) on the same preprocessed tensors:
top-1 agreement, how often its top-1 is in the reference's top-5, and the mean cosine of
the centred logits, where logits are ``log(softmax)`` centred per row, which equals the
raw logits minus their mean (softmax drops only a per-row constant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from resnet50.core.constants import SOFTMAX_OUTPUT, TOPK_OUTPUT_IDS
from resnet50.core.errors import InvalidInputError
from resnet50.core.registry import ClassLayout
from resnet50.processing.postprocess import topk_foreground

TOP_K = 5
SYNTHETIC_WARNING = "synthetic weights: labels are meaningless; this is not ImageNet accuracy"


def _top5_and_logits(outputs: dict[str, np.ndarray], classes: ClassLayout) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-5 class ids (1..N) and centred logits (None for native models, which give no softmax)."""
    if SOFTMAX_OUTPUT not in outputs:
        return np.asarray(outputs[TOPK_OUTPUT_IDS])[:, :TOP_K], None
    softmax = np.asarray(outputs[SOFTMAX_OUTPUT])
    _, ids = topk_foreground(softmax, TOP_K, classes)
    return ids, centred_logits(softmax)


def centred_logits(softmax: np.ndarray) -> np.ndarray:
    """``log(softmax)`` minus its row mean, in float64 (zeros clipped to the smallest float32)."""
    logits = np.log(np.maximum(softmax.astype(np.float64), np.finfo(np.float32).tiny))
    return logits - logits.mean(axis=1, keepdims=True)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.where(norms == 0, 1.0, norms)


@dataclass
class _Tally:
    top1: int = 0
    top5: int = 0

    def add(self, top5_ids: np.ndarray, labels: np.ndarray) -> None:
        truth = labels[:, None] + 1  # 0..999 label -> 1..1000 class id
        self.top1 += int((top5_ids[:, 0] == truth[:, 0]).sum())
        self.top5 += int((top5_ids == truth).any(axis=1).sum())

    def percents(self, count: int) -> dict:
        return {"top1_percent": 100.0 * self.top1 / count, "top5_percent": 100.0 * self.top5 / count}


def evaluate(
    model,
    dataset,
    *,
    reference=None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Score ``model`` on ``dataset`` (an :class:`~resnet50.apps.imagenet.ImagenetDataset`).

    With labels: top-1/top-5 (%). With ``reference``: both models run on the same
    preprocessed samples and the fidelity figures are added under ``"compare"``.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch size must be at least 1, got {batch_size}")
    if reference is None and not dataset.labelled:
        raise InvalidInputError("images without val_map.txt labels can only be compared: give --compare PRECISION")
    if reference is not None and reference.preprocessing != model.preprocessing:
        raise InvalidInputError("--compare needs two models with the same preprocessing (the same weights entry)")
    dataset = dataset.for_preprocessing(model.preprocessing)
    dataset.prepare()
    tally, ref_tally = _Tally(), _Tally()
    agree = in_top5 = 0
    cosine_sum = 0.0
    for start in range(0, len(dataset), batch_size):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        crops = dataset.crops(indices)
        ids, logits = _top5_and_logits(model.run(model.input_from_crops(crops), TOP_K), model.classes)
        labels = dataset.labels[indices] if dataset.labelled else None
        if labels is not None:
            tally.add(ids, labels)
        if reference is not None:
            ref_ids, ref_logits = _top5_and_logits(
                reference.run(reference.input_from_crops(crops), TOP_K), reference.classes
            )
            if logits is None or ref_logits is None:
                raise InvalidInputError("--compare needs both models' softmax; do not use --native with it")
            agree += int((ids[:, 0] == ref_ids[:, 0]).sum())
            in_top5 += int((ref_ids == ids[:, :1]).any(axis=1).sum())
            cosine_sum += float(row_cosine(logits, ref_logits).sum())
            if labels is not None:
                ref_tally.add(ref_ids, labels)
        if progress:
            progress(len(indices))

    count = len(dataset)
    result: dict = {
        "weights": model.weights,
        "precision": model.precision,
        "use_native": model.use_native,
        "count": count,
        "labelled": dataset.labelled,
    }
    if dataset.labelled:
        result.update(tally.percents(count))
    if reference is not None:
        compare = {
            "reference_precision": reference.precision,
            "top1_agreement_percent": 100.0 * agree / count,
            "top1_in_reference_top5_percent": 100.0 * in_top5 / count,
            "mean_logit_cosine": cosine_sum / count,
        }
        if dataset.labelled:
            compare.update({f"reference_{k}": v for k, v in ref_tally.percents(count).items()})
        result["compare"] = compare
    if model.source.weights.synthetic:
        result["warning"] = SYNTHETIC_WARNING
    return result
