"""Model outputs → labelled predictions.

Two postprocessors give identical results: the Python one works on ``softmax_tensor:0``;
the native one reads the top-k the graph computed itself (:func:`resnet50.graph.spec.with_topk`).
Both rank the foreground classes only (never MLPerf's background column) and break ties by the
lower class id; class ids run 1..N whatever the layout (``imagenet_index = class_id - 1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from resnet50.core.constants import SOFTMAX_OUTPUT, TOPK_OUTPUT_IDS, TOPK_OUTPUT_SCORES
from resnet50.core.errors import InvalidInputError
from resnet50.core.labels import labels
from resnet50.core.registry import MLPERF_CLASSES, ClassLayout
from resnet50.processing.preprocess import PreprocessContext


@dataclass(frozen=True)
class Prediction:
    label: str
    class_id: int  # 1..N over the foreground classes (MLPerf's 1001-way output: its column)
    score: float

    @property
    def imagenet_index(self) -> int:
        """The 0..999 label as ImageNet's ``val_map.txt`` numbers it."""
        return self.class_id - 1


@dataclass(frozen=True)
class Classification:
    """The top-k predictions for one image, best first."""

    predictions: list[Prediction]
    source: str = ""
    size: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return self.predictions[0].label

    @property
    def class_id(self) -> int:
        return self.predictions[0].class_id

    @property
    def score(self) -> float:
        return self.predictions[0].score

    def to_dict(self) -> dict:
        return {"source": self.source, "predictions": [asdict(p) for p in self.predictions]}


def topk_foreground(
    softmax: np.ndarray, k: int, classes: ClassLayout = MLPERF_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, class ids 1..N) per row over the foreground classes, ties to the lower id."""
    if softmax.ndim != 2 or softmax.shape[1] != classes.count:
        raise InvalidInputError(f"expected softmax of shape [N,{classes.count}], got {list(softmax.shape)}")
    if not 1 <= k <= classes.foreground:
        raise InvalidInputError(f"top_k must be in 1..{classes.foreground}, got {k}")
    foreground = softmax[:, classes.first :]
    order = np.argsort(-foreground, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(foreground, order, axis=1), order + 1


def _classifications(
    scores: np.ndarray, class_ids: np.ndarray, ctx: PreprocessContext | None, names: Sequence[str]
) -> list[Classification]:
    results = []
    for i, (row_scores, row_ids) in enumerate(zip(scores, class_ids)):
        preds = [Prediction(names[int(c)], int(c), float(s)) for s, c in zip(row_scores, row_ids)]
        source = ctx.sources[i] if ctx and i < len(ctx.sources) else ""
        size = ctx.sizes[i] if ctx and i < len(ctx.sizes) else None
        results.append(Classification(preds, source, size))
    return results


def postprocess(
    outputs: Mapping[str, np.ndarray] | np.ndarray,
    ctx: PreprocessContext | None = None,
    top_k: int = 5,
    classes: ClassLayout = MLPERF_CLASSES,
    names: Sequence[str] | None = None,
) -> Classification | list[Classification]:
    """Outputs of :meth:`ResNet50.run` (or a softmax array) → classification(s).

    Reads the fused top-k when the outputs hold it (native), else ranks the softmax over
    ``classes``. ``names[class_id]`` labels each class (default: ImageNet's, ``names[0]`` unused).
    Gives one :class:`Classification` when ``ctx`` came from a single image, else a list.
    """
    if isinstance(outputs, np.ndarray):
        outputs = {SOFTMAX_OUTPUT: outputs}
    if TOPK_OUTPUT_IDS in outputs:
        have = outputs[TOPK_OUTPUT_IDS].shape[1]
        if not 1 <= top_k <= have:
            raise InvalidInputError(
                f"top_k {top_k} is outside 1..{have}, what the model ran with (run with top_k >= {top_k})"
            )
        scores, ids = outputs[TOPK_OUTPUT_SCORES][:, :top_k], outputs[TOPK_OUTPUT_IDS][:, :top_k]
    elif SOFTMAX_OUTPUT in outputs:
        scores, ids = topk_foreground(np.asarray(outputs[SOFTMAX_OUTPUT]), top_k, classes)
    else:
        raise InvalidInputError(f"outputs hold neither {SOFTMAX_OUTPUT!r} nor {TOPK_OUTPUT_IDS!r}: {list(outputs)}")
    results = _classifications(scores, ids, ctx, labels() if names is None else names)
    if ctx is not None and not ctx.batched:
        return results[0]
    return results
