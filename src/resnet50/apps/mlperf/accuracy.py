"""Score ``mlperf_log_accuracy.json`` as MLPerf's ``accuracy-imagenet.py`` does.

Each response is the float32 0..999 label (the reference harness writes ``ArgMax - 1``),
hex-encoded in ``data``; ``qsl_idx`` is the line of ``val_map.txt``. Duplicates of a
``qsl_idx`` are ignored after the first, as in the reference.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from resnet50.apps.imagenet import read_val_map
from resnet50.core.errors import InputNotFoundError, InvalidInputError

RESPONSE_DTYPE = np.float32


@dataclass(frozen=True)
class AccuracyResult:
    good: int
    total: int
    duplicates: int

    @property
    def top1_percent(self) -> float:
        return 100.0 * self.good / self.total if self.total else 0.0

    def line(self) -> str:
        """The reference script's own output line."""
        return f"accuracy={self.top1_percent:.3f}%, good={self.good}, total={self.total}"

    def to_dict(self) -> dict:
        return {**asdict(self), "top1_percent": self.top1_percent}


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """0..999 labels (or -1 for "background") as the float32 array the responses point into."""
    return np.ascontiguousarray(labels, dtype=RESPONSE_DTYPE)


def decode_response(hex_data: str, dtype: np.dtype = RESPONSE_DTYPE) -> int:
    return int(np.frombuffer(bytes.fromhex(hex_data), dtype)[0])


def score(accuracy_log: str | os.PathLike, val_map: str | os.PathLike) -> AccuracyResult:
    """Top-1 of a LoadGen accuracy log against ``val_map.txt``."""
    accuracy_log = Path(accuracy_log)
    if not accuracy_log.is_file():
        raise InputNotFoundError(f"{accuracy_log}: no such file")
    try:
        entries = json.loads(accuracy_log.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{accuracy_log}: not a LoadGen accuracy log ({exc})") from None
    labels = read_val_map(val_map)
    seen: set[int] = set()
    good = 0
    for entry in entries:
        index = entry["qsl_idx"]
        if index in seen:
            continue
        seen.add(index)
        if index >= len(labels):
            raise InvalidInputError(f"{accuracy_log}: qsl_idx {index} is beyond the {len(labels)} lines of {val_map}")
        good += decode_response(entry["data"]) == labels[index][1]
    return AccuracyResult(good=good, total=len(seen), duplicates=len(entries) - len(seen))
