"""KServe / Open Inference Protocol v2: model metadata, request parsing and validation, responses.

Tensors arrive as JSON ``data`` (flat or nested, row-major) or, with the binary tensor
extension that ``tritonclient`` uses by default, as raw little-endian bytes after a JSON
header of ``Inference-Header-Content-Length`` bytes. Every problem is an
:class:`~resnet50.core.errors.InvalidInputError` naming the input and what is wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from resnet50.core.constants import INPUT_SIZE, TOPK_INPUT
from resnet50.core.errors import InvalidInputError

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int32": "INT32", "int64": "INT64"}
NUMPY_TYPES = {v: np.dtype(k).newbyteorder("<") for k, v in DATATYPES.items()}


@dataclass
class InferRequest:
    tensor: np.ndarray
    outputs: list[str]  # names to return, in order
    binary: dict[str, bool]  # output name -> send as binary
    id: str | None = None
    top_k: int = 5
    input_name: str = "input"


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def model_metadata(model, name: str) -> dict:
    """``GET /v2/models/{name}``: platform, inputs and outputs with v2 datatypes."""
    inputs = [t for t in model.backend.inputs if t.name != TOPK_INPUT]
    return {
        "name": name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": t.name, "datatype": DATATYPES.get(t.dtype, t.dtype), "shape": _dims(t.shape)} for t in inputs
        ],
        "outputs": [
            {"name": t.name, "datatype": DATATYPES.get(t.dtype, t.dtype), "shape": _dims(t.shape)}
            for t in model.backend.outputs
        ],
        "parameters": {
            "weights": model.weights,
            "synthetic_weights": model.source.weights.synthetic,
            "preprocessing": model.preprocessing.name,
            "precision": model.precision,
        },
    }


def parse_request(body: bytes, header_length: str | None, model) -> InferRequest:
    """Body of ``POST /v2/models/{name}/infer`` → the validated input tensor and what to return."""
    if not body:
        raise InvalidInputError("empty request body; expected a v2 inference request (JSON with 'inputs')")
    json_part, binary_part = body, b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInputError(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if not 0 < size <= len(body):
            raise InvalidInputError(f"Inference-Header-Content-Length {size} does not fit a body of {len(body)} bytes")
        json_part, binary_part = body[:size], body[size:]
    try:
        request = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInputError("request body nests JSON arrays or objects too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InvalidInputError("v2 inference request must be a JSON object with an 'inputs' list")
    expected_name = model.input_name
    expected_type = DATATYPES[model.input_dtype.name]
    if len(request["inputs"]) != 1:
        raise InvalidInputError(f"expected exactly 1 input ({expected_name!r}), got {len(request['inputs'])}")
    spec = request["inputs"][0]
    if not isinstance(spec, dict):
        raise InvalidInputError("each entry of 'inputs' must be an object with name, shape, datatype and data")
    name = spec.get("name")
    if name != expected_name:
        raise InvalidInputError(f"unknown input {name!r}; this model takes {expected_name!r}")
    if spec.get("datatype") != expected_type:
        raise InvalidInputError(f"input {name!r} has datatype {spec.get('datatype')!r}, expected {expected_type!r}")
    shape = spec.get("shape")
    expected_shape = f"[N,3,{INPUT_SIZE},{INPUT_SIZE}]"
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or len(shape) != 4
        or shape[1:] != [3, INPUT_SIZE, INPUT_SIZE]
        or shape[0] < 1
    ):
        raise InvalidInputError(f"input {name!r} has shape {shape}, expected {expected_shape} with N >= 1")
    tensor, binary_part = _tensor(spec, shape, binary_part, model.input_dtype)
    if binary_part:
        raise InvalidInputError(f"{len(binary_part)} bytes of binary data left over after the input tensor")
    outputs, binary = _requested_outputs(request, model)
    top_k = (request.get("parameters") or {}).get("top_k", 5) if isinstance(request.get("parameters"), dict) else 5
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
        raise InvalidInputError(f"parameter top_k must be an integer in 1..1000, got {top_k!r}")
    request_id = request.get("id")
    return InferRequest(tensor, outputs, binary, None if request_id is None else str(request_id), top_k, name)


def _tensor(spec: dict, shape: list[int], binary: bytes, dtype: np.dtype) -> tuple[np.ndarray, bytes]:
    name, count = spec["name"], math.prod(shape)  # exact: np.prod wraps around on huge shapes
    size = (spec.get("parameters") or {}).get("binary_data_size") if isinstance(spec.get("parameters"), dict) else None
    if size is not None:
        need = count * dtype.itemsize
        if size != need or len(binary) < need:
            raise InvalidInputError(
                f"input {name!r}: binary_data_size {size} with {len(binary)} bytes sent, shape {shape} needs {need}"
            )
        tensor = np.frombuffer(binary[:need], dtype.newbyteorder("<")).astype(dtype).reshape(shape)
        binary = binary[need:]
    elif "data" not in spec:
        raise InvalidInputError(f"input {name!r} has no 'data' (and no binary_data_size)")
    else:
        data = spec["data"]
        try:
            values = np.asarray(data, dtype=np.float64)
        except (ValueError, TypeError, RecursionError):
            raise InvalidInputError(f"input {name!r}: 'data' is not a flat or nested list of numbers") from None
        except OverflowError:
            raise InvalidInputError(f"input {name!r}: 'data' holds an integer too large for any tensor type") from None
        if values.ndim > 1 and list(values.shape) != shape:
            raise InvalidInputError(
                f"input {name!r}: nested 'data' has shape {list(values.shape)}, but shape says {shape}"
            )
        if values.size != count:
            raise InvalidInputError(f"input {name!r}: 'data' has {values.size} values, shape {shape} needs {count}")
        if dtype == np.uint8 and (
            not np.all(np.isfinite(values))
            or np.any(values != np.round(values))
            or values.min() < 0
            or values.max() > 255
        ):
            raise InvalidInputError(f"input {name!r}: UINT8 data must be whole numbers in 0..255")
        with np.errstate(over="ignore", invalid="ignore"):  # out of range: caught just below
            tensor = values.astype(dtype).reshape(shape)
    if tensor.dtype.kind == "f" and not np.all(np.isfinite(tensor)):
        raise InvalidInputError(
            f"input {name!r} contains NaN or infinity (or values beyond {DATATYPES[dtype.name]}'s range)"
        )
    return np.ascontiguousarray(tensor), binary


def _requested_outputs(request: dict, model) -> tuple[list[str], dict[str, bool]]:
    available = [t.name for t in model.backend.outputs]
    params = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    default_binary = bool(params.get("binary_data_output", False))
    wanted = request.get("outputs")
    if wanted is None or wanted == []:  # none named: all of them (as Triton does for an empty list)
        return available, {n: default_binary for n in available}
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise InvalidInputError("'outputs' must be a list of objects with a 'name'")
    names, binary = [], {}
    for out in wanted:
        if out.get("name") not in available:
            raise InvalidInputError(
                f"unknown output {out.get('name')!r}; this model has {', '.join(map(repr, available))}"
            )
        names.append(out["name"])
        out_params = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
        binary[out["name"]] = bool(out_params.get("binary_data", default_binary))
    return names, binary


def encode_response(
    outputs: dict[str, np.ndarray], request: InferRequest, model_name: str
) -> tuple[bytes, dict[str, str], str]:
    """Model outputs → (body, extra headers, content type) of the v2 inference response.

    Outputs that are not finite (an input far outside the range of images, e.g. 1e38, overflows
    the network) are refused with :class:`InvalidInputError`: JSON has no NaN, and the
    answer would mean nothing in binary either."""
    for name in request.outputs:
        value = outputs[name]
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            largest = float(np.max(np.abs(request.tensor))) if request.tensor.size else 0.0
            raise InvalidInputError(
                f"input {request.input_name!r}: the model's output {name!r} is not finite (NaN or infinity) "
                f"for these values (largest magnitude {largest:g}); send a preprocessed image tensor"
            )
    entries, blobs = [], []
    for name in request.outputs:
        value = np.ascontiguousarray(outputs[name])
        entry = {
            "name": name,
            "datatype": DATATYPES.get(value.dtype.name, value.dtype.name),
            "shape": list(value.shape),
        }
        if request.binary.get(name):
            blob = value.astype(value.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.ravel().tolist()
        entries.append(entry)
    payload = {"model_name": model_name, "model_version": "1", "outputs": entries}
    if request.id is not None:
        payload["id"] = request.id
    header = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}, "application/octet-stream"
