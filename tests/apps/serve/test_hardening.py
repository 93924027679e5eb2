"""``resnet50 serve`` against hostile clients (issue 16): stalled uploads, slow or endless
headers, too many connections, one huge request next to small ones, malformed bodies,
clients that go away, and native libraries' stderr lines.

Real servers on free loopback ports for what lives in the HTTP protocol, raw sockets for the
stalled clients; the batcher and the app in-process where that exercises the same code.
Every wait is bounded; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servers import AppClient, ServerProcess, strict_json  # noqa: E402

_V2 = "/v2/models/resnet50/infer"


# --- helpers ---


def _png(seed: int = 0, size: int = 48) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_cut_idat() -> bytes:
    """A PNG whose IDAT holds half its data but that still ends with IEND: libpng says
    ``libpng error: Not enough image data`` on stderr."""
    data = _png(1)
    at = data.find(b"IDAT") - 4
    size = struct.unpack(">I", data[at : at + 4])[0]
    return data[:at] + _chunk(b"IDAT", data[at + 8 : at + 8 + size // 2]) + data[-12:]


def _png_with_short_iccp() -> bytes:
    """A valid PNG with a 3-byte iCCP chunk: decodes, with ``libpng warning: iCCP: too short``."""
    data = _png(2)
    return data[:33] + _chunk(b"iCCP", b"x\x00\x00") + data[33:]


def _address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(server: ServerProcess, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(_address(server), timeout=timeout)


def _read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds it)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, {k.lower(): v for k, v in headers.items()}, body


def _metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{.*\}})? (\S+)$", text, re.M))


def _wait_for(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _v2_binary(tensor: np.ndarray) -> tuple[bytes, dict]:
    blob = tensor.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_tensor:0",
                    "datatype": "FP32",
                    "shape": list(tensor.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


@pytest.fixture(scope="module")
def hardened(model_fp32, tmp_path_factory):
    """One server with short timeouts for the limit tests."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("hardened"),
        *("--header-timeout", "1", "--body-timeout", "2", "--keep-alive-timeout", "1", "--max-header-kb", "8"),
    )
    yield srv
    assert srv.stop() == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


# --- 1. stalled uploads ---


@pytest.mark.slow
def test_64_stalled_uploads_do_not_lock_out_20_normal_requests(model_fp32, sample_photos, tmp_path):
    """Each stalled upload holds a connection, not a queue slot (--max-queue is 64)."""
    srv = ServerProcess(tmp_path)
    stalled = []
    try:
        for _ in range(64):
            sock = _connect(srv)
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b"\0" * 1000
            )
            stalled.append(sock)
        assert _wait_for(lambda: _metric(srv, "resnet50_open_connections") >= 64)
        photo = sample_photos[0].read_bytes()
        tensor, _ = model_fp32.preprocess(str(sample_photos[1]))
        binary, headers = _v2_binary(tensor)
        codes = []
        with httpx.Client(base_url=srv.url, timeout=120) as client:
            for i in range(20):
                if i % 4 == 3:
                    response = client.post(_V2, content=binary, headers=headers)
                else:
                    response = client.post("/v1/classify", content=photo)
                codes.append(response.status_code)
                assert client.get("/v2/health/ready", timeout=30).status_code == 200
        assert codes == [200] * 20
        # They were held open all along (the body timeout is a minute): not refused, not answered.
        for sock in stalled:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()
    # Each one going away is a disconnect: one log line each, its own metric, no 500.
    assert _wait_for(lambda: _metric(srv, "resnet50_client_disconnects_total") == 64)
    assert _metric(srv, 'resnet50_requests_total{endpoint="/v1/classify",code="500"}') == 0
    assert srv.stop() == 0
    log = srv.stderr
    assert len(re.findall(r"went away while sending its body \(1000 bytes received\): POST /v1/classify", log)) == 64
    assert "Traceback" not in log and "Exception in ASGI" not in log, log


# --- 2. header and body read timeouts, keep-alive, header size, connection cap ---


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent", [b"", b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Le"], ids=["nothing", "half-headers"]
)
def test_header_timeout_answers_408_and_closes(hardened, sent):
    with _connect(hardened) as sock:
        sock.sendall(sent)
        status, headers, body = _parse(_read_until_closed(sock))
    assert status == 408 and headers["connection"] == "close"
    assert strict_json(body) == {"error": "request headers not received within 1 s (--header-timeout)"}


@pytest.mark.slow
def test_body_timeout_answers_408_and_closes(hardened):
    with _connect(hardened) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"\0" * 100)
        status, headers, body = _parse(_read_until_closed(sock))
    assert status == 408 and headers["connection"] == "close"
    assert strict_json(body) == {
        "error": "request body not received within 2 s (--body-timeout): got 100 of 5000 bytes; "
        "send the whole body at once"
    }


@pytest.mark.slow
def test_body_still_trickling_after_its_answer_closes_the_connection(hardened):
    """A GET answered at once while its declared body never comes holds the connection no longer
    than --body-timeout, however slowly the client keeps sending."""
    with _connect(hardened) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        sock.settimeout(0.5)
        received, closed = b"", False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not closed:
            try:
                sock.send(b"x")  # one byte every half second
                chunk = sock.recv(65536)
                received += chunk
                closed = chunk == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    assert closed
    assert _parse(received)[0] == 200


@pytest.mark.slow
def test_idle_keep_alive_connection_closes(hardened):
    with _connect(hardened) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while b'"live":true}' not in data:
            data += sock.recv(65536)
        assert _parse(data)[0] == 200 and "connection: close" not in data.decode().lower()  # kept alive ...
        assert sock.recv(65536) == b""  # ... until idle for --keep-alive-timeout


@pytest.mark.slow
def test_endless_header_gets_431_and_the_server_keeps_answering(hardened):
    with _connect(hardened) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        for _ in range(256):  # 2 MB, unless the server answers first
            sock.sendall(b"a" * 8192)
            assert httpx.get(f"{hardened.url}/v2/health/ready", timeout=30).status_code == 200
            if select.select([sock], [], [], 0.01)[0]:
                break
        status, headers, body = _parse(_read_until_closed(sock))
    assert status == 431 and headers["connection"] == "close"
    assert strict_json(body) == {"error": "request headers larger than 8 KiB (--max-header-kb)"}
    assert _metric(hardened, 'resnet50_connections_refused_total{reason="headers_too_large"}') >= 1


@pytest.mark.slow
def test_connection_cap_answers_503_with_retry_after(model_fp32, tmp_path):
    srv = ServerProcess(tmp_path, "--max-connections", "3")
    held = []
    try:
        for _ in range(3):
            sock = _connect(srv)
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
            held.append(sock)
        answers = []
        assert _wait_for(
            lambda: (
                answers.append(httpx.get(f"{srv.url}/v2/health/ready", timeout=30)) or (answers[-1].status_code == 503)
            )
        )  # once the server has accepted the three
        response = answers[-1]
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.headers["connection"] == "close"
        assert response.json() == {
            "error": "server busy: 4 connections open, the limit is 3 (--max-connections); retry after 1 s"
        }
    finally:
        for sock in held:
            sock.close()
    assert _wait_for(lambda: httpx.get(f"{srv.url}/v2/health/ready", timeout=30).status_code == 200)
    assert srv.stop() == 0
    assert "connections open: answering 503 past --max-connections 3" in srv.stderr


@pytest.mark.slow
def test_sigterm_answers_uploads_still_arriving_with_503(model_fp32, tmp_path):
    """Not yet admitted, so not waited for: no graceful-timeout cancellation, no traceback."""
    srv = ServerProcess(tmp_path, "--graceful-timeout", "5")
    with _connect(srv) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"\0" * 10)
        assert _wait_for(lambda: _metric(srv, "resnet50_open_connections") >= 2)
        assert srv.stop() == 0
        status, headers, body = _parse(_read_until_closed(sock))
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert strict_json(body) == {"error": "server shutting down; retry"}
    log = srv.stderr
    assert "Traceback" not in log and "Cancel" not in log and "went away" not in log, log


def test_cli_shows_the_limit_flags_with_their_defaults():
    out = subprocess.run(
        [sys.executable, "-m", "resnet50", "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    text = " ".join(out.split())
    for flag, default in (
        ("--header-timeout S", "(default 10)"),
        ("--body-timeout S", "(default 60)"),
        ("--keep-alive-timeout S", "(default 5)"),
        ("--max-header-kb KB", "(default 16)"),
        ("--max-connections N", "(default 512)"),
    ):
        assert flag in text and default in text.rsplit(flag, 1)[1][:200], (flag, text)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--header-timeout", "0"], "--header-timeout must be positive, got 0.0"),
        (["--body-timeout", "-1"], "--body-timeout must be positive, got -1.0"),
        (["--keep-alive-timeout", "0"], "--keep-alive-timeout must be positive, got 0.0"),
        (["--max-header-kb", "0.5"], "--max-header-kb must be at least 1, got 0.5"),
        (["--max-connections", "0"], "--max-connections must be at least 1, got 0"),
    ],
)
def test_cli_refuses_bad_limits_in_one_line(option, message):
    result = subprocess.run(
        [sys.executable, "-m", "resnet50", "serve", *option], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"resnet50 serve: error: {message}"]


def test_serve_settings_carry_the_limits_to_the_protocol():
    from resnet50.apps.serve.connections import ConnectionLimits
    from resnet50.apps.serve.run import ServeSettings

    settings = ServeSettings(max_batch=1, header_timeout=3, body_timeout=7, max_header_kb=4, max_connections=9)
    assert settings.limits() == ConnectionLimits(
        header_timeout=3, body_timeout=7, keep_alive_timeout=5.0, max_header_bytes=4096, max_connections=9
    )
    assert ServeSettings(max_batch=1).limits() == ConnectionLimits()


def test_bodies_being_received_at_once_have_a_budget(model_fp32):
    """Stalled uploads hold no queue slot, so what they hold in memory is bounded by itself:
    --max-queue x --max-body-mb bytes of bodies in flight (here 2 x 1 MB), then 503."""
    from resnet50.apps.serve.app import create_app

    client = AppClient(create_app(model_fp32, max_queue=2, max_body_mb=1, log=lambda m: None))
    release = asyncio.Event()

    async def slow_body():
        yield b"\0" * 700_000
        await release.wait()

    async def scenario():
        held = [asyncio.ensure_future(client.client.post("/v1/classify", content=slow_body())) for _ in range(2)]
        await asyncio.sleep(0.2)  # both have sent 700 kB and wait
        third = await client.client.post("/v1/classify", content=b"\0" * 700_000)
        release.set()
        return third, await asyncio.gather(*held)

    try:
        third, held = client.call(scenario())
    finally:
        client.close()
    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert third.json() == {
        "error": "server busy: 2.0 MB of request bodies being received, the limit is 2 MB "
        "(--max-queue x --max-body-mb); retry after 1 s"
    }
    assert [r.status_code for r in held] == [400, 400]  # not images, but received and answered


# --- 3. fairness: one large request does not starve a small one ---


class _GatedModel:
    """Records the rows of each batch (each row's value names its request); the first run
    waits for ``gate``, so a test can send more while it runs."""

    def __init__(self, streams: int = 1):
        self.backend = type("Backend", (), {"streams": streams})()
        self.batches: list[list[float]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.lock = threading.Lock()

    def run(self, tensor, top_k=5):
        with self.lock:
            self.batches.append(tensor[:, 0].tolist())
        self.started.set()
        assert self.gate.wait(30)
        return {"y": tensor[:, 0].copy()}


def _fair(streams: int, max_batch: int):
    from resnet50.apps.serve.batcher import Batcher

    model = _GatedModel(streams)

    async def main():
        batcher = Batcher(model, max_batch=max_batch, max_wait_ms=0)
        batcher.start()
        try:
            big = asyncio.ensure_future(batcher.infer(np.full((128, 1), 1.0, np.float32)))
            assert await asyncio.to_thread(model.started.wait, 30)
            small = asyncio.ensure_future(batcher.infer(np.full((1, 1), 2.0, np.float32)))
            await asyncio.sleep(0.05)  # the small request is queued behind the running batch
            model.gate.set()
            return await asyncio.wait_for(small, 60), await asyncio.wait_for(big, 60)
        finally:
            model.gate.set()
            await batcher.stop()

    single, whole = asyncio.run(main())
    return model, single, whole


@pytest.mark.parametrize("streams, max_batch", [(1, 8), (2, 1)], ids=["1-stream-batch-8", "2-streams-batch-1"])
def test_single_image_next_to_128_waits_about_one_batch(streams, max_batch):
    model, single, whole = _fair(streams, max_batch)
    assert single["y"].tolist() == [2.0] and whole["y"].tolist() == [1.0] * 128
    first_with_small = next(i for i, rows in enumerate(model.batches) if 2.0 in rows)
    # FIFO would run it after all 128 rows (batch 17 of 8, or run 129 of 1). Fair: right after
    # the batches running when it came (one per stream), at most one more on the other stream.
    assert first_with_small <= 2 * streams - 1
    assert sum(len(rows) for rows in model.batches) == 129 and max(map(len, model.batches)) <= max_batch


def test_batches_take_rows_from_each_waiting_request_in_turn():
    from resnet50.apps.serve.batcher import Batcher

    model = _GatedModel()

    async def main():
        batcher = Batcher(model, max_batch=4, max_wait_ms=0)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.infer(np.full((1, 1), 9.0, np.float32)))
            assert await asyncio.to_thread(model.started.wait, 30)  # running: the rest queue up
            rest = [
                asyncio.ensure_future(batcher.infer(np.full((n, 1), v, np.float32)))
                for v, n in ((1, 6), (2, 6), (3, 1))
            ]
            await asyncio.sleep(0.05)
            model.gate.set()
            return await asyncio.gather(first, *rest)
        finally:
            model.gate.set()
            await batcher.stop()

    results = asyncio.run(main())
    assert [r["y"].tolist() for r in results] == [[9.0], [1.0] * 6, [2.0] * 6, [3.0]]
    # One row of each in turn (A A B C: 4 rows from 3 requests), and the next batch starts one
    # request further round the ring.
    assert model.batches == [[9], [1, 1, 2, 3], [2, 2, 1, 1], [1, 1, 2, 2], [2]]


def test_withdrawn_request_rows_are_not_run():
    """A request whose client went away (its infer call cancelled) drops its rows not yet run."""
    from resnet50.apps.serve.batcher import Batcher

    model = _GatedModel()

    async def main():
        batcher = Batcher(model, max_batch=4, max_wait_ms=0)
        batcher.start()
        try:
            big = asyncio.ensure_future(batcher.infer(np.full((64, 1), 1.0, np.float32)))
            assert await asyncio.to_thread(model.started.wait, 30)
            big.cancel()
            await asyncio.sleep(0.05)
            model.gate.set()
            after = await asyncio.wait_for(batcher.infer(np.full((1, 1), 5.0, np.float32)), 60)
            return after, big.cancelled()
        finally:
            model.gate.set()
            await batcher.stop()

    after, cancelled = asyncio.run(main())
    assert cancelled and after["y"].tolist() == [5.0]
    assert model.batches == [[1.0] * 4, [5.0]]  # 60 rows never ran


def test_convert_makes_each_batch_input_from_the_stored_rows():
    """A float model's rows wait as uint8 crops and are converted per batch (a quarter of the memory)."""
    from resnet50.apps.serve.batcher import Batcher
    from resnet50.processing.preprocess import normalize

    seen = []

    class Model:
        def run(self, tensor, top_k=5):
            seen.append((tensor.dtype, len(tensor)))
            return {"y": tensor.reshape(len(tensor), -1)[:, :2].copy()}

    crops = np.random.default_rng(0).integers(0, 256, (10, 3, 4, 4), dtype=np.uint8)

    async def main():
        batcher = Batcher(Model(), max_batch=4, max_wait_ms=0)
        batcher.start()
        try:
            return await batcher.infer(crops, convert=normalize)
        finally:
            await batcher.stop()

    out = asyncio.run(main())
    np.testing.assert_array_equal(out["y"], normalize(crops).reshape(10, -1)[:, :2])
    assert seen == [(np.float32, 4), (np.float32, 4), (np.float32, 2)]


@pytest.mark.slow
def test_server_answers_a_single_image_before_a_large_request_sent_first(model_fp32, tmp_path):
    srv = ServerProcess(tmp_path)
    files = [("file", (f"p{i}.png", _png(10 + i, 32), "image/png")) for i in range(48)]
    done: dict[str, float] = {}

    def big():
        response = httpx.post(f"{srv.url}/v1/classify", files=files, timeout=300)
        assert response.status_code == 200 and len(response.json()) == 48
        done["big"] = time.monotonic()

    try:
        before = _metric(srv, "resnet50_images_total")
        thread = threading.Thread(target=big)
        thread.start()
        assert _wait_for(lambda: _metric(srv, "resnet50_images_total") > before, 120)  # it is running
        response = httpx.post(f"{srv.url}/v1/classify", content=_png(99, 32), timeout=300)
        done["single"] = time.monotonic()
        assert response.status_code == 200
        thread.join(300)
        assert "big" in done and done["single"] < done["big"]  # FIFO answered it after all 48
    finally:
        assert srv.stop() == 0


# --- 4. malformed bodies: 4xx JSON, never 500 or invalid JSON (in-process, the same app) ---


@pytest.fixture(scope="module")
def app_client(model_fp32):
    from resnet50.apps.serve.app import create_app

    lines: list[str] = []
    client = AppClient(create_app(model_fp32, max_body_mb=8, log=lines.append))
    client.log = lines
    yield client
    client.close()


def _deep(depth: int) -> bytes:
    return b'{"inputs": [{"name": "input_tensor:0", "data": ' + b"[" * depth + b"]" * depth + b"}]}"


def _spec_body(**changes) -> bytes:
    spec = {"name": "input_tensor:0", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0] * (3 * 224 * 224)}
    spec.update(changes)
    return json.dumps({"inputs": [spec]}).encode()


def _huge_int_body() -> bytes:
    return _spec_body(data=[0]).replace(b"[0]", b"[" + b"7" * 400 + b"]")


@pytest.mark.parametrize(
    "body, status, message",
    [
        (_deep(100_000), 400, "request body nests JSON arrays or objects too deeply"),
        (b"[" * 100_000, 400, "request body nests JSON arrays or objects too deeply"),
        (_huge_int_body(), 400, "input 'input_tensor:0': 'data' holds an integer too large for any tensor type"),
        (_spec_body(data=[1e38] * (3 * 224 * 224)), 400, "input 'input_tensor:0': the model's output"),
        (_spec_body(data=[-3e38] * (3 * 224 * 224)), 400, "input 'input_tensor:0': the model's output"),
        (
            _spec_body(data=[0.0] * (3 * 224 * 224)).replace(b"[0.0, ", b"[NaN, ", 1),
            400,
            "input 'input_tensor:0' contains NaN or infinity",
        ),
        (
            _spec_body(data=[0.0] * (3 * 224 * 224)).replace(b"[0.0, ", b"[1e39, ", 1),
            400,
            "input 'input_tensor:0' contains NaN or infinity",
        ),
    ],
    ids=["deep-object", "deep-array", "400-digit-int", "1e38", "minus-3e38", "NaN-literal", "overflows-float32"],
)
def test_v2_malformed_bodies_get_400_json(app_client, body, status, message):
    response = app_client.post(_V2, content=body)
    assert response.status_code == status, response.text
    error = strict_json(response.text)["error"]
    assert error.startswith(message), error


def test_v2_output_that_is_not_finite_is_refused_in_binary_too(app_client):
    body, headers = _v2_binary(np.full((1, 3, 224, 224), 1e38, np.float32))
    response = app_client.post(_V2, content=body, headers=headers)
    assert response.status_code == 400
    assert "is not finite (NaN or infinity) for these values (largest magnitude 1e+38)" in response.json()["error"]


def test_v2_response_body_isstrict_json(app_client):
    """The same request with ordinary values: a valid answer, parsed with NaN refused."""
    response = app_client.post(_V2, content=_spec_body(data=[1.0] * (3 * 224 * 224)))
    assert response.status_code == 200
    outputs = {o["name"]: o for o in strict_json(response.text)["outputs"]}
    assert np.isfinite(outputs["softmax_tensor:0"]["data"]).all()


def test_server_fault_is_a_json_500(model_fp32):
    """Not a client's fault, still JSON: a model that fails answers 500 {"error": ...}."""
    from resnet50.apps.serve.app import create_app

    class Broken:
        def __getattr__(self, name):
            return getattr(model_fp32, name)

        def run(self, tensor, top_k=5):
            raise RuntimeError("stub failure")

    client = AppClient(create_app(Broken(), log=lambda m: None))
    try:
        response = client.post("/v1/classify", content=_png(3))
    finally:
        client.close()
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error (RuntimeError); see the server log"}


# --- 5. client disconnects: one log line each, their own metric ---


@pytest.mark.slow
def test_disconnects_are_one_line_each_and_their_own_metric(model_fp32, tmp_path):
    srv = ServerProcess(tmp_path)
    try:
        with _connect(srv) as sock:  # mid-body
            sock.sendall(b"POST /v2/models/resnet50/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 9000\r\n\r\n{")
            assert _wait_for(lambda: _metric(srv, "resnet50_open_connections") >= 2)
        assert _wait_for(lambda: _metric(srv, "resnet50_client_disconnects_total") == 1)
        # While its images run: the whole request is sent, then the client leaves.
        files = [("file", (f"p{i}.png", _png(50 + i, 32), "image/png")) for i in range(32)]
        request = httpx.Request("POST", f"{srv.url}/v1/classify", files=files)
        before = _metric(srv, "resnet50_images_total")
        with _connect(srv) as sock:
            head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
            sock.sendall(f"POST /v1/classify HTTP/1.1\r\n{head}\r\n".encode() + request.read())
            assert _wait_for(lambda: _metric(srv, "resnet50_images_total") > before, 120)
        assert _wait_for(lambda: _metric(srv, "resnet50_client_disconnects_total") == 2)
        assert _wait_for(lambda: _metric(srv, "resnet50_inflight_requests") == 0, 120)
        assert _metric(srv, "resnet50_images_total") - before < 32  # its rows not yet run were dropped
        assert _metric(srv, 'resnet50_request_errors_total{endpoint="/v1/classify",reason="internal"}') == 0
    finally:
        assert srv.stop() == 0
    log = srv.stderr
    gone = [line for line in log.splitlines() if "went away" in line and "stopped;" not in line]
    assert len(gone) == 2, log
    assert re.fullmatch(
        r"resnet50 serve: client 127\.0\.0\.1:\d+ went away while sending its body \(1 bytes received\): "
        r"POST /v2/models/resnet50/infer",
        gone[0],
    )
    assert re.fullmatch(
        r"resnet50 serve: client 127\.0\.0\.1:\d+ went away before its answer: POST /v1/classify", gone[1]
    )
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert "2 clients went away before their answer" in log


def test_disconnect_in_process_is_logged_once_and_counted(app_client):
    """The same path in-process: ClientDisconnect while reading is a 499 record, not a 500."""
    from resnet50.apps.serve.app import AccountingApp

    app: AccountingApp = app_client.app
    before = app.metrics.disconnects.value("/v1/classify")

    async def leave():
        messages = iter([{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}])

        async def receive():
            return next(messages)

        sent = []

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/classify",
            "raw_path": b"/v1/classify",
            "query_string": b"",
            "headers": [(b"content-length", b"100")],
            "client": ("10.0.0.1", 4242),
            "server": ("t", 80),
            "scheme": "http",
            "root_path": "",
            "http_version": "1.1",
        }
        await app(scope, receive, send)
        return sent

    sent = app_client.call(leave())
    assert sent[0]["status"] == 499
    assert app.metrics.disconnects.value("/v1/classify") == before + 1
    assert app.metrics.requests.value("/v1/classify", "500") == 0
    assert app_client.log[-1] == (
        "client 10.0.0.1:4242 went away while sending its body (3 bytes received): POST /v1/classify"
    )


# --- 6. native libraries' stderr lines never reach the log ---


@pytest.mark.slow
def test_no_library_lines_in_the_server_log(model_fp32, tmp_path):
    """libpng on stderr, python-multipart's logger, numpy's overflow warning: none reaches the log."""
    srv = ServerProcess(tmp_path)
    try:
        broken = httpx.post(f"{srv.url}/v1/classify", content=_png_with_cut_idat(), timeout=60)
        odd = httpx.post(f"{srv.url}/v1/classify", content=_png_with_short_iccp(), timeout=60)
        files = [("file", ("cut.png", _png_with_cut_idat(), "image/png"))]
        named = httpx.post(f"{srv.url}/v1/classify", files=files, timeout=60)
        form = httpx.post(
            f"{srv.url}/v1/classify",
            content=b"--other\r\n\r\nxx\r\n--other--\r\n",
            headers={"content-type": "multipart/form-data; boundary=b0und"},
            timeout=60,
        )
        overflow = httpx.post(f"{srv.url}{_V2}", content=_spec_body(data=[1e39] * (3 * 224 * 224)), timeout=60)
    finally:
        assert srv.stop() == 0
    assert broken.status_code == 400 and broken.json()["error"].startswith("request body: not a decodable image")
    assert named.status_code == 400 and named.json()["error"].startswith("cut.png: not a decodable image")
    assert odd.status_code == 200
    assert form.status_code == 400 and "multipart" in form.json()["error"]
    assert overflow.status_code == 400 and "contains NaN or infinity" in overflow.json()["error"]
    lines = [line for line in srv.stderr.splitlines() if not line.startswith("resnet50")]
    assert lines == [], lines  # only our own lines: no libpng, no boundary warnings, no RuntimeWarning


def test_native_stderr_filter_drops_library_lines_and_prefixes_the_rest():
    code = r"""
import os, sys
from resnet50.apps.serve.native_stderr import filter_native_stderr
filter_native_stderr()
os.write(2, b"libpng error: Not enough image data\n")
os.write(2, b"libpng warning: iCCP: too short\n")
os.write(2, b"[ERROR:1@0.033] global loadsave.cpp (1076) imdecode_ imdecode_('x'): can't read header\n")
os.write(2, b"2026-01-01 10:00:00.1 [W:onnxruntime:, session_state.cc:1166 Verify] Some nodes\n")
os.write(2, b"Corrupt JPEG data: 12 extraneous bytes before marker 0xd9\n")
os.write(2, b"something else entirely\n")
print("python's own line", file=sys.stderr)
import time; time.sleep(0.5)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stderr.splitlines()) == [
        "python's own line",
        "resnet50 serve: native: something else entirely",
    ]
