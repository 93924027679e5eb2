"""ImageNet class names for the model's 1001 outputs (index 0 is background)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from resnet50.core.constants import NUM_CLASSES

BACKGROUND = "background"


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("resnet50").joinpath("data/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line]
    wnids, names = zip(*rows)
    assert len(names) == NUM_CLASSES - 1, "the class table must list the 1000 ImageNet classes"
    return tuple(wnids), tuple(names)


def labels() -> tuple[str, ...]:
    """The 1001 names in model-output order: ``labels()[class_id]``."""
    return (BACKGROUND, *_table()[1])


def synsets() -> tuple[str, ...]:
    """WordNet ids of the 1000 classes in synset order (``synsets()[class_id - 1]``)."""
    return _table()[0]


def label(class_id: int) -> str:
    """The name of one model class id (1..1000; 0 is background)."""
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class id {class_id} is outside 0..{NUM_CLASSES - 1}")
    return labels()[class_id]
