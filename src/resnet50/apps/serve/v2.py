"""KServe / Open Inference Protocol v2: model metadata, request parsing and validation, responses.

Tensors arrive as JSON ``data`` (flat or nested, row-major) or, with the binary tensor
extension that ``tritonclient`` uses by default, as raw little-endian bytes after a JSON
header of ``Inference-Header-Content-Length`` bytes. Every problem is an
:class:`~resnet50.core.errors.InvalidInputError` naming the input and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from resnet50.apps.serve.tensors import (
    DATATYPES,
    byte_size,
    check_finite_outputs,
    check_input,
    check_outputs,
    check_top_k,
    tensor_from_bytes,
    tensor_from_values,
)
from resnet50.core.constants import TOPK_INPUT
from resnet50.core.errors import InvalidInputError

HEADER_LENGTH = "inference-header-content-length"


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
    spec = request["inputs"][0] if len(request["inputs"]) == 1 else {}
    if not isinstance(spec, dict):
        raise InvalidInputError("each entry of 'inputs' must be an object with name, shape, datatype and data")
    name = spec.get("name")
    shape = check_input(model, len(request["inputs"]), name, spec.get("datatype"), spec.get("shape"))
    tensor, binary_part = _tensor(spec, shape, binary_part, model.input_dtype)
    if binary_part:
        raise InvalidInputError(f"{len(binary_part)} bytes of binary data left over after the input tensor")
    outputs, binary = _requested_outputs(request, model)
    top_k = (request.get("parameters") or {}).get("top_k", 5) if isinstance(request.get("parameters"), dict) else 5
    request_id = request.get("id")
    request_id = None if request_id is None else str(request_id)
    return InferRequest(tensor, outputs, binary, request_id, check_top_k(top_k), name)


def _tensor(spec: dict, shape: list[int], binary: bytes, dtype: np.dtype) -> tuple[np.ndarray, bytes]:
    name = spec["name"]
    size = (spec.get("parameters") or {}).get("binary_data_size") if isinstance(spec.get("parameters"), dict) else None
    if size is not None:
        need = byte_size(shape, dtype)
        if size != need or len(binary) < need:
            raise InvalidInputError(
                f"input {name!r}: binary_data_size {size} with {len(binary)} bytes sent, shape {shape} needs {need}"
            )
        return tensor_from_bytes(name, shape, binary[:need], dtype), binary[need:]
    if "data" not in spec:
        raise InvalidInputError(f"input {name!r} has no 'data' (and no binary_data_size)")
    try:
        values = np.asarray(spec["data"], dtype=np.float64)
    except (ValueError, TypeError, RecursionError):
        raise InvalidInputError(f"input {name!r}: 'data' is not a flat or nested list of numbers") from None
    except OverflowError:
        raise InvalidInputError(f"input {name!r}: 'data' holds an integer too large for any tensor type") from None
    if values.ndim > 1 and list(values.shape) != shape:
        raise InvalidInputError(f"input {name!r}: nested 'data' has shape {list(values.shape)}, but shape says {shape}")
    return tensor_from_values(name, shape, values.ravel(), dtype, "'data'"), binary


def _requested_outputs(request: dict, model) -> tuple[list[str], dict[str, bool]]:
    params = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    default_binary = bool(params.get("binary_data_output", False))
    wanted = request.get("outputs")
    if wanted is None or wanted == []:  # none named: all of them (as Triton does for an empty list)
        available = check_outputs(model, [])
        return available, {n: default_binary for n in available}
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise InvalidInputError("'outputs' must be a list of objects with a 'name'")
    names = check_outputs(model, [out.get("name") for out in wanted])
    binary = {}
    for out in wanted:
        out_params = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
        binary[out["name"]] = bool(out_params.get("binary_data", default_binary))
    return names, binary


def encode_response(
    outputs: dict[str, np.ndarray], request: InferRequest, model_name: str
) -> tuple[bytes, dict[str, str], str]:
    """Model outputs → (body, extra headers, content type) of the v2 inference response; outputs
    that are not finite are refused (:func:`~resnet50.apps.serve.tensors.check_finite_outputs`)."""
    check_finite_outputs(outputs, request.outputs, request.input_name, request.tensor)
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
