"""The MLPerf model interface as tensor specs, and the check that a model file has it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resnet50.core.constants import INPUT_NAME, SOFTMAX_OUTPUT, TOPK_INPUT, UINT8_INPUT_NAME
from resnet50.core.errors import ModelFileError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple  # ints, or None/str for dynamic axes

    def __str__(self) -> str:
        dims = ",".join("?" if not isinstance(d, int) or d < 0 else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def _fixed(dim) -> int | None:
    return dim if isinstance(dim, int) and dim >= 0 else None


def image_input(inputs: Sequence[TensorSpec]) -> TensorSpec | None:
    """The image input: the MLPerf float32 one or our uint8 variant's, if the model has one."""
    by_name = {t.name: t for t in inputs}
    return by_name.get(INPUT_NAME) or by_name.get(UINT8_INPUT_NAME)


def has_image_shape(spec: TensorSpec) -> bool:
    """Whether an input is [N,3,224,224], N any."""
    return len(spec.shape) == 4 and [_fixed(d) for d in spec.shape[1:]] == [3, 224, 224]


def check_interface(path: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Refuse a model that is not ResNet50 v1.5 with the MLPerf interface (or our variants)."""
    by_name = {t.name: t for t in inputs}
    image = image_input(inputs)
    problem = None
    if image is None:
        problem = f"it has no input {INPUT_NAME!r} (inputs: {', '.join(map(str, inputs)) or 'none'})"
    elif not has_image_shape(image):
        problem = f"its input {image} is not [N,3,224,224]"
    elif image.dtype != ("float32" if image.name == INPUT_NAME else "uint8"):
        problem = f"its input {image} has the wrong element type"
    elif set(by_name) - {INPUT_NAME, UINT8_INPUT_NAME, TOPK_INPUT}:
        problem = f"it has unexpected inputs ({', '.join(map(str, inputs))})"
    else:
        out = {t.name: t for t in outputs}
        scores = out.get(SOFTMAX_OUTPUT)
        if scores is None and "topk_scores" not in out:
            problem = f"it has no output {SOFTMAX_OUTPUT!r} (outputs: {', '.join(map(str, outputs)) or 'none'})"
        elif scores is not None and scores.shape and (len(scores.shape) != 2 or (_fixed(scores.shape[-1]) or 2) < 2):
            problem = f"its output {scores} is not [N,classes] with at least 2 classes"
    if problem:
        raise ModelFileError(f"{path}: not a ResNet50 v1.5 model with the MLPerf interface: {problem}")


def class_count(outputs: Sequence[TensorSpec]) -> int | None:
    """How many classes the model's softmax output has, where the model says."""
    scores = next((t for t in outputs if t.name == SOFTMAX_OUTPUT), None)
    return _fixed(scores.shape[-1]) if scores is not None and scores.shape else None
