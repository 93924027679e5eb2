"""Class names: ImageNet's for the model's 1001 outputs (index 0 is background), or a user's labels file."""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources

from resnet50.core.constants import NUM_CLASSES
from resnet50.core.errors import InputNotFoundError, InvalidInputError

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


def read_labels(path: str | os.PathLike, count: int | None = None) -> tuple[str, ...]:
    """Class names from a file, one per line (blank lines skipped), as ``names[class_id]``:
    index 0 is a placeholder, ``names[1]`` is the first line. ``count`` is the model's class
    count, which the file must match."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"{path}: cannot read the labels file ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    if not names:
        raise InvalidInputError(f"{path}: the labels file names no classes (one name per line)")
    if count is not None and len(names) != count:
        raise InvalidInputError(f"{path}: names {len(names)} classes, but the model has {count}")
    return ("", *names)
