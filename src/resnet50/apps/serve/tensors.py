"""Protocol-neutral checks of an Open Inference Protocol request: its input tensor, the outputs
it asks for and its ``top_k``, the same for KServe v2 over HTTP (:mod:`.v2`) and over gRPC
(:mod:`.grpc`).

Each protocol unpacks its own encoding (JSON ``data``, binary tensor data, protobuf typed
contents, ``raw_input_contents``) and hands the pieces here, so both refuse the same inputs
with the same words: an :class:`~resnet50.core.errors.InvalidInputError` naming the input and
the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from resnet50.core.constants import INPUT_SIZE
from resnet50.core.errors import InvalidInputError

DATATYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int32": "INT32", "int64": "INT64"}
EXPECTED_SHAPE = f"[N,3,{INPUT_SIZE},{INPUT_SIZE}]"


def datatype(dtype: np.dtype) -> str:
    """The protocol's name of a numpy dtype (``FP32``, ``INT64``, ...)."""
    return DATATYPES.get(np.dtype(dtype).name, np.dtype(dtype).name)


def check_input(model, count: int, name: object, datatype_: object, shape: object) -> list[int]:
    """The request's one input must be the model's, with its datatype and ``[N,3,224,224]``
    (N >= 1); its shape as a list of ints."""
    expected_name = model.input_name
    expected_type = datatype(model.input_dtype)
    if count != 1:
        raise InvalidInputError(f"expected exactly 1 input ({expected_name!r}), got {count}")
    if name != expected_name:
        raise InvalidInputError(f"unknown input {name!r}; this model takes {expected_name!r}")
    if datatype_ != expected_type:
        raise InvalidInputError(f"input {name!r} has datatype {datatype_!r}, expected {expected_type!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or len(shape) != 4
        or shape[1:] != [3, INPUT_SIZE, INPUT_SIZE]
        or shape[0] < 1
    ):
        raise InvalidInputError(f"input {name!r} has shape {shape}, expected {EXPECTED_SHAPE} with N >= 1")
    return shape


def byte_size(shape: Sequence[int], dtype: np.dtype) -> int:
    """Bytes of a tensor of ``shape`` (exact: ``np.prod`` wraps around on huge shapes)."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def tensor_from_bytes(name: str, shape: list[int], data: bytes, dtype: np.dtype) -> np.ndarray:
    """A tensor from exactly ``byte_size(shape, dtype)`` little-endian bytes (checked by the caller,
    whose message names its own field)."""
    tensor = np.frombuffer(data, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
    return _finite(name, tensor)


def tensor_from_values(name: str, shape: list[int], values: np.ndarray, dtype: np.dtype, field: str) -> np.ndarray:
    """A tensor from a flat array of numbers sent as ``field`` (JSON ``'data'``, a protobuf
    contents field): the count must match ``shape``, UINT8 values must be whole numbers in 0..255."""
    count = math.prod(shape)
    if values.size != count:
        raise InvalidInputError(f"input {name!r}: {field} has {values.size} values, shape {shape} needs {count}")
    if np.dtype(dtype) == np.uint8 and (
        not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0 or values.max() > 255
    ):
        raise InvalidInputError(f"input {name!r}: UINT8 data must be whole numbers in 0..255")
    with np.errstate(over="ignore", invalid="ignore"):  # out of range: caught just below
        tensor = values.astype(dtype).reshape(shape)
    return _finite(name, tensor)


def _finite(name: str, tensor: np.ndarray) -> np.ndarray:
    if tensor.dtype.kind == "f" and not np.all(np.isfinite(tensor)):
        raise InvalidInputError(
            f"input {name!r} contains NaN or infinity (or values beyond {datatype(tensor.dtype)}'s range)"
        )
    return np.ascontiguousarray(tensor)


def check_finite_outputs(outputs: dict[str, np.ndarray], names: Sequence[str], input_name: str, tensor) -> None:
    """Refuse outputs that are not finite: an input far outside the range of images (e.g. 1e38)
    overflows the network, and such an answer would mean nothing (JSON cannot even carry it)."""
    for name in names:
        value = outputs[name]
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            largest = float(np.max(np.abs(tensor))) if tensor.size else 0.0
            raise InvalidInputError(
                f"input {input_name!r}: the model's output {name!r} is not finite (NaN or infinity) "
                f"for these values (largest magnitude {largest:g}); send a preprocessed image tensor"
            )


def check_outputs(model, names: Sequence[object]) -> list[str]:
    """The requested output names, each one of the model's (all of them when none is named)."""
    available = [t.name for t in model.backend.outputs]
    if not names:
        return available
    for name in names:
        if name not in available:
            raise InvalidInputError(f"unknown output {name!r}; this model has {', '.join(map(repr, available))}")
    return list(names)


def check_top_k(value: object) -> int:
    """The ``top_k`` request parameter: an integer in 1..1000."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise InvalidInputError(f"parameter top_k must be an integer in 1..1000, got {value!r}")
    return value
