"""``resnet50 serve --grpc-port``: the Open Inference Protocol over gRPC, as ``tritonclient.grpc`` sees it.

A real server subprocess on free loopback ports (HTTP and gRPC side by side). Checks every RPC
with tritonclient's sync and asyncio clients (raw tensors, as they send them) and with its
generated stub (typed contents), that answers are bit-identical to ``ResNet50.run``, that every
error is the right status code naming the problem, that a message over the size limit is
refused by gRPC itself, and that SIGTERM under gRPC load answers every accepted request.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
grpc = pytest.importorskip("grpc", reason="the gRPC server needs the grpc extra (grpcio)")
tritongrpc = pytest.importorskip("tritonclient.grpc", reason="the gRPC tests use tritonclient[grpc] as the client")
import tritonclient.grpc.aio as tritongrpc_aio  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # noqa: E402

from servers import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
INPUT = "input_tensor:0"
DRAINING = "server is shutting down; send new requests elsewhere"


class GrpcServer(ServerProcess):
    """``resnet50 serve --port 0 --grpc-port 0 ARGS``; knows both addresses."""

    def __init__(self, log_dir, *args: str):
        super().__init__(log_dir, "--grpc-port", "0", *args)
        deadline = time.monotonic() + 60
        while not (match := re.search(r"gRPC listening on (127\.0\.0\.1:\d+)", self.stderr)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"gRPC did not start:\n{self.stderr}")
            time.sleep(0.05)
        self.address = match.group(1)

    def stub(self):
        return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.address, options=UNLIMITED))


@pytest.fixture(scope="module")
def server(model_fp32, tmp_path_factory):
    srv = GrpcServer(tmp_path_factory.mktemp("serve-grpc"), "--max-wait-ms", "20")
    yield srv
    assert srv.stop() == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


@pytest.fixture(scope="module")
def client(server):
    with tritongrpc.InferenceServerClient(server.address) as c:
        yield c


@pytest.fixture(scope="module")
def photos(model_fp32, sample_photos) -> np.ndarray:
    """The five photos as the FP32 ``[5,3,224,224]`` tensor that ``preprocess`` makes."""
    tensor, _ = model_fp32.preprocess([str(p) for p in sample_photos])
    return tensor


def _batch(photos: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(photos, (n, *photos.shape[1:])))


def _raw_input(tensor: np.ndarray):
    inp = tritongrpc.InferInput(INPUT, list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor)
    return inp


def _typed_request(tensor: np.ndarray, **fields) -> pb.ModelInferRequest:
    spec = pb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=tensor.shape)
    spec.contents.fp32_contents.extend(tensor.ravel().tolist())
    return pb.ModelInferRequest(model_name="resnet50", inputs=[spec], **fields)


def _assert_same(result_numpy, want: dict[str, np.ndarray]) -> None:
    for name, value in want.items():
        got = result_numpy(name)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value, err_msg=name)


def _typed_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    assert len(response.raw_output_contents) == 0  # a typed request gets typed contents back
    fields = {"FP32": ("fp32_contents", np.float32), "INT64": ("int64_contents", np.int64)}
    out = {}
    for o in response.outputs:
        field, dtype = fields[o.datatype]
        out[o.name] = np.asarray(getattr(o.contents, field), dtype).reshape(list(o.shape))
    return out


# --- health and metadata ---


def test_live_ready_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("resnet50") and client.is_model_ready("resnet50", "1")
    meta = client.get_server_metadata()
    assert (meta.name, meta.version, list(meta.extensions)) == ("resnet50", "1", [])


def test_model_metadata_is_the_http_v2_one(server, client):
    meta = client.get_model_metadata("resnet50")
    http = httpx.get(f"{server.url}/v2/models/resnet50", timeout=30).json()
    assert (meta.name, list(meta.versions), meta.platform) == (http["name"], http["versions"], http["platform"])
    tensors = [
        [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in group]
        for group in (meta.inputs, meta.outputs)
    ]
    assert tensors == [http["inputs"], http["outputs"]]
    assert tensors[0] == [{"name": INPUT, "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert [t["name"] for t in tensors[1]] == ["ArgMax:0", "softmax_tensor:0"]


# --- inference: bit-identical to ResNet50.run ---


@pytest.mark.parametrize("n", [1, 4])
def test_infer_raw_sync_equals_model_run(client, model_fp32, photos, n):
    tensor = _batch(photos, n)
    result = client.infer("resnet50", [_raw_input(tensor)], request_id=f"req-{n}")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("resnet50", "1", f"req-{n}")
    assert len(response.raw_output_contents) == 2
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("ArgMax:0", "INT64", [n]),
        ("softmax_tensor:0", "FP32", [n, 1001]),
    ]
    _assert_same(result.as_numpy, model_fp32.run(tensor))


def test_infer_raw_one_requested_output(client, model_fp32, photos):
    tensor = _batch(photos, 2)
    result = client.infer("resnet50", [_raw_input(tensor)], outputs=[tritongrpc.InferRequestedOutput("ArgMax:0")])
    assert [o.name for o in result.get_response().outputs] == ["ArgMax:0"]
    np.testing.assert_array_equal(result.as_numpy("ArgMax:0"), model_fp32.run(tensor)["ArgMax:0"])


def test_infer_raw_async_concurrent_batches_1_and_4(server, model_fp32, photos):
    """tritonclient.grpc.aio, requests in flight together (so the batcher serves them side by side)."""
    tensors = [photos[i : i + 1] for i in range(5)] + [_batch(photos[1:], 4), _batch(photos, 4)]

    async def send_all():
        async with tritongrpc_aio.InferenceServerClient(server.address) as c:
            assert await c.is_server_ready() and await c.is_model_ready("resnet50")
            return await asyncio.gather(*(c.infer("resnet50", [_raw_input(t)]) for t in tensors))

    for tensor, result in zip(tensors, asyncio.run(send_all())):
        _assert_same(result.as_numpy, model_fp32.run(tensor))


@pytest.mark.parametrize("n", [1, 4])
def test_infer_typed_contents_sync_equals_model_run(server, model_fp32, photos, n):
    tensor = _batch(photos[1:], n)
    response = server.stub().ModelInfer(_typed_request(tensor, id="typed"), timeout=120)
    assert response.id == "typed"
    _assert_same(_typed_outputs(response).get, model_fp32.run(tensor))


def test_infer_typed_contents_async_equals_model_run(server, model_fp32, photos):
    tensors = [photos[:1], _batch(photos[2:], 4)]

    async def send_all():
        async with grpc.aio.insecure_channel(server.address, options=UNLIMITED) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return await asyncio.gather(*(stub.ModelInfer(_typed_request(t), timeout=120) for t in tensors))

    for tensor, response in zip(tensors, asyncio.run(send_all())):
        _assert_same(_typed_outputs(response).get, model_fp32.run(tensor))


def test_default_message_size_takes_a_batch_of_32_and_refuses_more(client, model_fp32, photos):
    """32 MiB by default: a batch of 32 FP32 images (19.3 MB) passes; 56 (33.7 MB) is refused by gRPC."""
    tensor = _batch(photos, 32)
    _assert_same(client.infer("resnet50", [_raw_input(tensor)], client_timeout=300).as_numpy, model_fp32.run(tensor))
    with pytest.raises(tritongrpc.InferenceServerException) as info:
        client.infer("resnet50", [_raw_input(np.zeros((56, 3, 224, 224), np.float32))], client_timeout=300)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert re.fullmatch(r"SERVER: Received message larger than max \(337\d{5} vs. 33554432\)", info.value.message())


# --- errors: the status code and a message naming the problem ---

_ZEROS = np.zeros((1, 3, 224, 224), np.float32)


def _raw(shape=(1, 3, 224, 224), datatype="FP32", name=INPUT, data=None, **fields) -> pb.ModelInferRequest:
    spec = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    raw = _ZEROS.tobytes() if data is None else data
    return pb.ModelInferRequest(
        model_name=fields.pop("model_name", "resnet50"), inputs=[spec], raw_input_contents=[raw], **fields
    )


def _two_inputs() -> pb.ModelInferRequest:
    request = _raw()
    request.inputs.add(name="second", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    return request


def _raw_and_typed() -> pb.ModelInferRequest:
    request = _raw()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 3)
    return request


def _typed_in(field: str, values: list) -> pb.ModelInferRequest:
    spec = pb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=[1, 3, 224, 224])
    getattr(spec.contents, field).extend(values)
    return pb.ModelInferRequest(model_name="resnet50", inputs=[spec])


def _with_top_k(value) -> pb.ModelInferRequest:
    request = _raw()
    request.parameters["top_k"].int64_param = value
    return request


def _asking_for(name: str) -> pb.ModelInferRequest:
    request = _raw()
    request.outputs.add(name=name)
    return request


_NAN = np.full((1, 3, 224, 224), np.nan, np.float32).tobytes()
BAD = {
    "wrong shape": (
        lambda: _raw(shape=[1, 3, 32, 32], data=b"\0" * 12288),
        "INVALID_ARGUMENT",
        "input 'input_tensor:0' has shape [1, 3, 32, 32], expected [N,3,224,224] with N >= 1",
    ),
    "zero batch": (lambda: _raw(shape=[0, 3, 224, 224], data=b""), "INVALID_ARGUMENT", "with N >= 1"),
    "wrong datatype": (
        lambda: _raw(datatype="INT64"),
        "INVALID_ARGUMENT",
        "input 'input_tensor:0' has datatype 'INT64', expected 'FP32'",
    ),
    "wrong input name": (
        lambda: _raw(name="images"),
        "INVALID_ARGUMENT",
        "unknown input 'images'; this model takes 'input_tensor:0'",
    ),
    "two inputs": (_two_inputs, "INVALID_ARGUMENT", "expected exactly 1 input ('input_tensor:0'), got 2"),
    "raw too short": (
        lambda: _raw(data=b"\0" * 100),
        "INVALID_ARGUMENT",
        "input 'input_tensor:0': raw_input_contents has 100 bytes, shape [1, 3, 224, 224] needs 602112",
    ),
    "raw and typed": (_raw_and_typed, "INVALID_ARGUMENT", "has both contents and raw_input_contents"),
    "typed too few": (
        lambda: _typed_in("fp32_contents", [0.0] * 10),
        "INVALID_ARGUMENT",
        "input 'input_tensor:0': contents.fp32_contents has 10 values, shape [1, 3, 224, 224] needs 150528",
    ),
    "typed in the wrong field": (
        lambda: _typed_in("int64_contents", [0] * 150528),
        "INVALID_ARGUMENT",
        "FP32 values go in contents.fp32_contents, got int64_contents",
    ),
    "NaN": (lambda: _raw(data=_NAN), "INVALID_ARGUMENT", "input 'input_tensor:0' contains NaN or infinity"),
    "unknown output": (
        lambda: _asking_for("logits"),
        "INVALID_ARGUMENT",
        "unknown output 'logits'; this model has 'ArgMax:0', 'softmax_tensor:0'",
    ),
    "top_k zero": (
        lambda: _with_top_k(0),
        "INVALID_ARGUMENT",
        "parameter top_k must be an integer in 1..1000, got 0",
    ),
    "unknown model": (
        lambda: _raw(model_name="vgg16"),
        "NOT_FOUND",
        "unknown model 'vgg16'; this server has 'resnet50'",
    ),
    "unknown version": (
        lambda: _raw(model_version="2"),
        "NOT_FOUND",
        "model 'resnet50' has no version '2'; it has '1'",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_infer_gets_its_status_code_and_names_the_problem(server, case):
    make, code, message = BAD[case]
    with pytest.raises(grpc.RpcError) as info:
        server.stub().ModelInfer(make(), timeout=60)
    assert info.value.code() == getattr(grpc.StatusCode, code), info.value.details()
    assert message in info.value.details()


def test_unknown_model_in_metadata_and_ready_is_not_found(client):
    for call in (client.get_model_metadata, client.is_model_ready):
        with pytest.raises(tritongrpc.InferenceServerException) as info:
            call("vgg16")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert info.value.message() == "unknown model 'vgg16'; this server has 'resnet50'"


@pytest.mark.parametrize(
    "call,method",
    [
        (lambda c: c.get_model_config("resnet50"), "ModelConfig"),
        (lambda c: c.get_inference_statistics("resnet50"), "ModelStatistics"),
        (lambda c: c.get_model_repository_index(), "RepositoryIndex"),
        (lambda c: c.load_model("resnet50"), "RepositoryModelLoad"),
        (lambda c: c.get_system_shared_memory_status(), "SystemSharedMemoryStatus"),
    ],
)
def test_other_rpcs_are_unimplemented(client, call, method):
    with pytest.raises(tritongrpc.InferenceServerException) as info:
        call(client)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert info.value.message().startswith(f"inference.GRPCInferenceService/{method} is not implemented")


def test_streaming_infer_is_unimplemented(server):
    with pytest.raises(grpc.RpcError) as info:
        list(server.stub().ModelStreamInfer(iter([_raw()]), timeout=60))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ModelStreamInfer is not implemented" in info.value.details()


def test_metrics_count_grpc_requests_by_protocol(server, client, photos):
    client.infer("resnet50", [_raw_input(photos[:1])])
    with pytest.raises(grpc.RpcError):
        server.stub().ModelInfer(_raw(datatype="INT64"), timeout=60)
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert re.search(r'resnet50_requests_total\{protocol="grpc",endpoint="ModelInfer",code="OK"\} [1-9]', text)
    assert re.search(
        r'resnet50_request_errors_total\{protocol="grpc",endpoint="ModelInfer",reason="bad_input"\} [1-9]', text
    )
    assert re.search(r'resnet50_request_latency_seconds_count\{protocol="grpc",endpoint="ModelInfer"\} [1-9]', text)
    assert 'code="INTERNAL"' not in text


def test_native_server_takes_uint8_raw_and_typed_and_top_k(model_native, sample_photos, tmp_path):
    """With --native the input is the uint8 crop and top-k is fused: ``top_k`` shapes the outputs."""
    srv = GrpcServer(tmp_path, "--native")
    try:
        crops, _ = model_native.preprocess([str(p) for p in sample_photos[:2]])
        with tritongrpc.InferenceServerClient(srv.address) as c:
            inputs = c.get_model_metadata("resnet50").inputs
            assert [(t.name, t.datatype, list(t.shape)) for t in inputs] == [
                ("input_uint8", "UINT8", [-1, 3, 224, 224])
            ]
            inp = tritongrpc.InferInput("input_uint8", list(crops.shape), "UINT8")
            inp.set_data_from_numpy(crops)
            result = c.infer("resnet50", [inp], parameters={"top_k": 3})
            want = model_native.run(crops, 3)
            assert want["topk_class_ids"].shape == (2, 3)
            _assert_same(result.as_numpy, want)
        spec = pb.ModelInferRequest.InferInputTensor(name="input_uint8", datatype="UINT8", shape=crops.shape)
        spec.contents.uint_contents.extend(crops.ravel().tolist())
        request = pb.ModelInferRequest(model_name="resnet50", inputs=[spec])
        _assert_same(_typed_outputs(srv.stub().ModelInfer(request, timeout=120)).get, model_native.run(crops))
        request.inputs[0].contents.uint_contents[7] = 300
        with pytest.raises(grpc.RpcError) as info:
            srv.stub().ModelInfer(request, timeout=120)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "input 'input_uint8': UINT8 data must be whole numbers in 0..255"
    finally:
        assert srv.stop() == 0, srv.stderr


# --- limits shared with HTTP, and shutdown ---


def test_full_queue_is_resource_exhausted_and_message_limit_is_settable(model_fp32, photos, tmp_path):
    srv = GrpcServer(tmp_path, "--max-queue", "2", "--max-batch", "1", "--workers", "1", "--grpc-max-message-mb", "1")
    try:
        tensor = photos[2:3]
        want = model_fp32.run(tensor)

        async def burst():
            async with tritongrpc_aio.InferenceServerClient(srv.address) as c:

                async def one():
                    try:
                        return await c.infer("resnet50", [_raw_input(tensor)])
                    except tritongrpc.InferenceServerException as exc:
                        return exc

                return await asyncio.gather(*(one() for _ in range(24)))

        results = asyncio.run(burst())
        refused = [r for r in results if isinstance(r, Exception)]
        assert refused and len(refused) <= 22, [str(r) for r in refused]
        for r in refused:
            assert r.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert r.message().startswith("server busy: 2 requests already in flight; retry after")
        for r in results:
            if not isinstance(r, Exception):
                _assert_same(r.as_numpy, want)
        text = httpx.get(f"{srv.url}/metrics", timeout=30).text
        series = 'resnet50_request_errors_total{protocol="grpc",endpoint="ModelInfer",reason="overloaded"}'
        assert f"{series} {len(refused)}" in text
        with tritongrpc.InferenceServerClient(srv.address) as c:  # room again once the burst is over
            _assert_same(c.infer("resnet50", [_raw_input(tensor)]).as_numpy, want)
            with pytest.raises(tritongrpc.InferenceServerException) as info:  # 1.2 MB > --grpc-max-message-mb 1
                c.infer("resnet50", [_raw_input(photos[:2])])
            assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert re.fullmatch(
                r"SERVER: Received message larger than max \(1204\d{3} vs. 1048576\)", info.value.message()
            )
    finally:
        assert srv.stop() == 0, srv.stderr


def test_sigterm_under_grpc_load_answers_every_accepted_request(model_fp32, photos, tmp_path):
    """Every request the server accepted gets its answer; one sent while it drains gets
    UNAVAILABLE; then the server exits 0. A request that reaches gRPC as it closes the port
    is refused by gRPC itself (UNAVAILABLE, or CANCELLED before any handler ran): the server's
    count of accepted and answered requests shows that none of those was accepted."""
    srv = GrpcServer(tmp_path, "--max-batch", "2")
    tensor = photos[1:2]
    want = model_fp32.run(tensor)
    state = {"ok": 0, "after_term": 0, "term_sent": False, "draining": 0, "not_accepted": 0}
    bad: list[str] = []

    async def worker(c):
        while True:
            try:
                result = await c.infer("resnet50", [_raw_input(tensor)], client_timeout=120)
            except tritongrpc.InferenceServerException as exc:
                if not state["term_sent"]:
                    bad.append(f"before SIGTERM: {exc.status()} {exc.message()}")
                elif exc.status() == "StatusCode.UNAVAILABLE" and exc.message() == DRAINING:
                    state["draining"] += 1
                elif exc.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"):
                    state["not_accepted"] += 1
                else:
                    bad.append(f"{exc.status()} {exc.message()}")
                return
            try:
                _assert_same(result.as_numpy, want)
            except AssertionError as exc:
                bad.append(str(exc))
            state["ok"] += 1
            state["after_term"] += state["term_sent"]

    async def load():
        async with tritongrpc_aio.InferenceServerClient(srv.address) as c:
            tasks = [asyncio.create_task(worker(c)) for _ in range(6)]
            while state["ok"] < 4 and not bad:
                await asyncio.sleep(0.01)
            srv.proc.send_signal(signal.SIGTERM)
            state["term_sent"] = True
            await asyncio.wait_for(asyncio.gather(*tasks), 120)

    try:
        asyncio.run(load())
        code = srv.proc.wait(60)
    finally:
        srv.kill()
    assert code == 0, srv.stderr
    assert not bad, bad
    assert state["after_term"] >= 1, "no request was in flight when SIGTERM arrived"
    assert state["draining"] >= 1, state  # answered UNAVAILABLE by the draining server
    answered = re.search(r"stopped; answered (\d+) of (\d+) requests accepted", srv.stderr)
    assert answered, srv.stderr
    accepted = state["ok"] + state["draining"] + srv.responses
    assert int(answered.group(1)) == int(answered.group(2)) == accepted
    assert "Traceback" not in srv.stderr


# --- the command line ---


def _serve(*args: str, code: str = "pass") -> subprocess.CompletedProcess:
    script = f"import sys; {code}; from resnet50.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", script, "serve", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--grpc-port", "70000"], "--grpc-port must be in 0..65535, got 70000"),
        (["--port", "8123", "--grpc-port", "8123"], "--grpc-port must differ from --port (8123)"),
        (["--grpc-port", "0", "--grpc-max-message-mb", "0"], "--grpc-max-message-mb must be positive, got 0.0"),
    ],
)
def test_cli_refuses_bad_grpc_options_in_one_line(args, message):
    proc = _serve(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"resnet50 serve: error: {message}"]


def test_cli_taken_grpc_port_is_one_line_exit_2():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve("--port", "0", "--grpc-port", str(port))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"resnet50 serve: error: --grpc-port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


@pytest.mark.parametrize("module,named", [("grpc", "grpcio"), ("tritonclient.grpc", "tritonclient[grpc]")])
def test_cli_without_the_grpc_extra_names_it(module, named):
    proc = _serve("--port", "0", "--grpc-port", "0", code=f"sys.modules[{module!r}] = None")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"resnet50 serve: error: --grpc-port needs {named}: pip install 'resnet50[grpc]'"
    ]
