"""The load test's tensor clients: one preprocessed image per request over KServe v2 HTTP (JSON or
binary tensor data) or the Open Inference Protocol over gRPC (raw contents), each answer checked
against ``ResNet50.run``.

Like ``http_client.py`` they do only what a load test needs, because the load generator shares
the server's cores: every request body is encoded once, before the clock starts (a real client
would encode each time, the same for every protocol), and an answer is checked by comparing its
bytes (binary, gRPC) or its parsed numbers (JSON) with the expected outputs. gRPC goes through
``grpc.aio`` with the request already serialized and tritonclient's generated messages only to
read the answer, as the HTTP modes use a lean HTTP/1.1 client rather than ``tritonclient.http``.

Each sender is ``async send(i) -> (outcome, None)`` for the ``i``-th request (image ``i % n``),
outcome ``ok``, ``wrong`` (an answer that differs from ``ResNet50.run``), ``error`` or ``lost``.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
DATATYPES = {"float32": "FP32", "uint8": "UINT8"}


class TensorSet:
    """The model's batch-1 input tensors of some images, with ``ResNet50.run``'s outputs."""

    def __init__(self, model, paths: list[str]):
        self.input_name = model.input_name
        self.datatype = DATATYPES[model.input_dtype.name]
        self.tensors = [model.preprocess(path)[0] for path in paths]
        self.expected = [model.run(tensor) for tensor in self.tensors]

    def __len__(self) -> int:
        return len(self.tensors)

    def spec(self, tensor: np.ndarray) -> dict:
        return {"name": self.input_name, "datatype": self.datatype, "shape": list(tensor.shape)}


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and np.array_equal(got, want)


def http_v2_sender(client, images: TensorSet, binary: bool, timeout: float):
    """``POST /v2/models/resnet50/infer`` with JSON ``data``, or binary tensor data in and out."""
    bodies = []
    for tensor in images.tensors:
        if binary:
            blob = tensor.astype(tensor.dtype.newbyteorder("<")).tobytes()
            outputs = [{"name": name, "parameters": {"binary_data": True}} for name in images.expected[0]]
            spec = {**images.spec(tensor), "parameters": {"binary_data_size": len(blob)}}
            header = json.dumps({"inputs": [spec], "outputs": outputs}).encode()
            bodies.append((header + blob, f"Inference-Header-Content-Length: {len(header)}\r\n"))
        else:
            request = {"inputs": [{**images.spec(tensor), "data": tensor.ravel().tolist()}]}
            bodies.append((json.dumps(request).encode(), ""))

    def correct(response, want: dict[str, np.ndarray]) -> bool:
        size = int(response.headers.get("inference-header-content-length", len(response.content)))
        answer, offset = json.loads(response.content[:size]), size
        for out in answer["outputs"]:
            expected = want[out["name"]]
            if binary:
                length = out["parameters"]["binary_data_size"]
                got = np.frombuffer(response.content[offset : offset + length], expected.dtype.newbyteorder("<"))
                offset += length
            else:
                got = np.asarray(out["data"], expected.dtype)
            if not _same(got.reshape(out["shape"]), expected):
                return False
        return len(answer["outputs"]) == len(want)

    async def send(i: int):
        body, headers = bodies[i % len(bodies)]
        try:
            response = await asyncio.wait_for(client.post("/v2/models/resnet50/infer", body, headers), timeout)
        except (asyncio.TimeoutError, ConnectionError):
            return "lost", None
        if response.status_code != 200:
            return "error", None
        try:
            return ("ok" if correct(response, images.expected[i % len(images)]) else "wrong"), None
        except (ValueError, KeyError):
            return "error", None

    return send


def grpc_raw_sender(channel, images: TensorSet, timeout: float):
    """``ModelInfer`` with ``raw_input_contents`` on a ``grpc.aio`` channel; answers come raw."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    bodies = []
    for tensor in images.tensors:
        spec = pb.ModelInferRequest.InferInputTensor(**images.spec(tensor))
        raw = tensor.astype(tensor.dtype.newbyteorder("<")).tobytes()
        bodies.append(pb.ModelInferRequest(model_name="resnet50", inputs=[spec], raw_input_contents=[raw]))
    bodies = [body.SerializeToString() for body in bodies]
    expected = [
        {name: value.astype(value.dtype.newbyteorder("<")).tobytes() for name, value in want.items()}
        for want in images.expected
    ]
    infer = channel.unary_unary(GRPC_INFER)  # bytes in, bytes out: no per-request serialization here

    async def send(i: int):
        try:
            answer = pb.ModelInferResponse.FromString(await infer(bodies[i % len(bodies)], timeout=timeout))
        except grpc.aio.AioRpcError as exc:
            lost = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            return ("lost" if lost else "error"), None
        want = expected[i % len(expected)]
        got = {out.name: raw for out, raw in zip(answer.outputs, answer.raw_output_contents)}
        return ("ok" if got == want else "wrong"), None

    return send


def grpc_channel(address: str):
    """A ``grpc.aio`` channel without message size limits (the server's own limit applies)."""
    import grpc

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    return grpc.aio.insecure_channel(address, options=options)
