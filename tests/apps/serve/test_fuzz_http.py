"""Fuzzing both HTTP APIs with hostile inputs (``hypothesis``, seeded and bounded).

Generated inputs go to the server's app in-process (the code a server runs for a request,
minus uvicorn's parser; the connection limits have their own tests): ``/v1/classify`` with
image bytes cut, flipped, spliced or with lying headers, as the raw body or in odd multipart
bodies; ``/v2/models/resnet50/infer`` with wrong names, datatypes, shapes, nesting and values,
broken JSON text, and the binary tensor extension with lying sizes. Every answer must come
within the client timeout (no hang), never be a 5xx, and be strict JSON; every error is one
line naming the input or the part of the request that is wrong. A Python warning raised while
serving (overflow in a cast, ...) fails the request too: it would be noise in the server log.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib
from collections import Counter
from datetime import timedelta

import cv2
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from servers import AppClient, strict_json  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::RuntimeWarning")]

_V2 = "/v2/models/resnet50/infer"
_COUNT = 3 * 224 * 224


def fuzz(examples: int):
    """Seeded and bounded: the same ``examples`` inputs on every run, each within a minute."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=60),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


TALLY: Counter = Counter()  # (endpoint, status) -> answers, over the whole module


class _Records(logging.Handler):
    """Every warning or error a library logs while serving: with no handler set up (uvicorn sets
    up only its own loggers), Python would print each one raw on the server's stderr."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


LOGGED = _Records()


@pytest.fixture(scope="module")
def app(model_fp32):
    from resnet50.apps.serve.app import create_app

    logging.getLogger().addHandler(LOGGED)
    client = AppClient(create_app(model_fp32, max_body_mb=4, max_megapixels=20, log=lambda m: None), timeout=60)
    yield client
    client.close()
    logging.getLogger().removeHandler(LOGGED)
    print("\nfuzz answers by endpoint and status:", dict(sorted(TALLY.items())), "total", sum(TALLY.values()))


def _encode(ext: str, image: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def _bases() -> list[bytes]:
    rng = np.random.default_rng(16)
    color = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return [
        _encode(".png", color),
        _encode(".jpg", color, (cv2.IMWRITE_JPEG_QUALITY, 80)),
        _encode(".jpg", color, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        _encode(".bmp", color[:8, :8]),
        _encode(".webp", color, (cv2.IMWRITE_WEBP_QUALITY, 80)),
        _encode(".png", cv2.cvtColor(color, cv2.COLOR_BGR2GRAY)),
        _encode(".png", np.dstack([color, color[..., :1]])),
        _encode(".ppm", color[:6, :6]),
    ]


BASES = _bases()


def _png_dims(data: bytes, width: int, height: int, fix_crc: bool) -> bytes:
    ihdr = data[12:29]
    new = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    crc = struct.pack(">I", zlib.crc32(new)) if fix_crc else data[29:33]
    return data[:12] + new + crc + data[33:]


def _lie(data: bytes, width: int, height: int, fix_crc: bool) -> bytes:
    """The header of ``data`` rewritten to declare ``width`` x ``height`` (the pixels stay)."""
    if data.startswith(b"\x89PNG"):
        return _png_dims(data, width, height, fix_crc)
    if data.startswith(b"\xff\xd8"):
        at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
        if at > 0:
            return data[: at + 5] + struct.pack(">HH", height & 0xFFFF, width & 0xFFFF) + data[at + 9 :]
    if data.startswith(b"BM"):
        return data[:18] + struct.pack("<ii", width % 2**31, -(height % 2**31)) + data[26:]
    if data.startswith(b"RIFF"):
        return data[:4] + struct.pack("<I", width) + data[8:]  # the RIFF size
    return data.replace(b"6 6", f"{width} {height}".encode(), 1)


dims = st.one_of(st.integers(0, 70_000), st.sampled_from([0, 1, 2**16 - 1, 2**31 - 1, 2**32 - 1]))


@st.composite
def hostile_image(draw) -> bytes:
    base = draw(st.sampled_from(BASES))
    kind = draw(st.sampled_from(["intact", "cut", "flip", "lie", "splice", "random", "magic"]))
    if kind == "cut":
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "flip":
        data = bytearray(base)
        for at in draw(st.lists(st.integers(0, len(base) - 1), min_size=1, max_size=12)):
            data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "lie":
        return _lie(base, draw(dims), draw(dims), draw(st.booleans()))
    if kind == "splice":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.binary(min_size=1, max_size=300)) + base[at:]
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "magic":  # a real signature, then garbage
        return base[: draw(st.integers(2, 16))] + draw(st.binary(max_size=400))
    return base


top_k = st.one_of(
    st.none(),
    st.sampled_from(["1", "5", "1000", "0", "1001", "-3", "abc", "1e3", "5.0", "", "９", "99999999999999999999"]),
)


def _names_problem(error: str, names: tuple[str, ...]) -> bool:
    return "\n" not in error and any(name in error for name in names)


def _check(response: httpx.Response, endpoint: str, names: tuple[str, ...]) -> None:
    TALLY[(endpoint, response.status_code)] += 1
    logged, LOGGED.records[:] = [f"{r.name}: {r.getMessage()}" for r in LOGGED.records], []
    assert response.status_code < 500, response.text
    assert not logged, logged
    if response.status_code >= 400:
        body = strict_json(response.content)
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
        assert _names_problem(body["error"], names), body["error"]


def _check_classify(response: httpx.Response, filenames: tuple[str, ...] = ()) -> None:
    names = ("request body", "multipart", "top_k", "file", *filenames)
    _check(response, "/v1/classify", names)
    if response.status_code == 200:
        body = strict_json(response.content)
        rows = body if isinstance(body, list) else [body]
        assert rows and all(isinstance(row["predictions"], list) and row["predictions"] for row in rows)


def _check_v2(response: httpx.Response) -> None:
    _check(response, "v2 infer", ("input", "request body", "Inference-Header-Content-Length", "output", "parameter"))
    if response.status_code == 200:
        size = response.headers.get("inference-header-content-length")
        header = response.content if size is None else response.content[: int(size)]
        assert strict_json(header)["outputs"]


# --- /v1/classify ---


@fuzz(200)
@given(
    data=hostile_image(),
    content_type=st.sampled_from(
        [None, "image/png", "application/octet-stream", "text/plain", "multipart/form-data", "image/jpeg; x=y"]
    ),
    k=top_k,
)
def _classify_raw(app, data, content_type, k):
    headers = {"content-type": content_type} if content_type else {}
    params = {} if k is None else {"top_k": k}
    _check_classify(app.post("/v1/classify", content=data, headers=headers, params=params))


def test_fuzz_classify_raw_body(app):
    before = sum(n for (e, _), n in TALLY.items() if e == "/v1/classify")
    _classify_raw(app)
    assert sum(n for (e, _), n in TALLY.items() if e == "/v1/classify") - before >= 180


filenames = st.one_of(
    st.none(), st.text(max_size=20), st.sampled_from(["a.png", "../../etc/passwd", "x\r\ny", "é.jpg"])
)


@st.composite
def part(draw) -> tuple[str, tuple]:
    field = draw(st.sampled_from(["file", "file", "files", "image", ""]))
    if draw(st.integers(0, 9)) == 0:
        return field, (None, draw(st.text(max_size=30)))  # a text field, not a file
    return field, (draw(filenames), draw(hostile_image()), draw(st.sampled_from(["image/png", "text/plain", "x/y"])))


@fuzz(140)
@given(parts=st.lists(part(), min_size=1, max_size=5), k=top_k)
def _classify_multipart(app, parts, k):
    params = {} if k is None else {"top_k": k}
    try:
        request = httpx.Request("POST", "http://test/v1/classify", files=parts, params=params)
    except (TypeError, ValueError, UnicodeEncodeError):
        return  # httpx cannot encode it; the raw multipart fuzz below sends what it cannot
    body = request.read()
    sent = re.findall(rb'filename="([^"]*)"', body)  # as httpx wrote them (control characters escaped)
    names = tuple(n.decode("utf-8", "replace") for n in sent) + tuple(n.decode("latin-1") for n in sent)
    _check_classify(app.post("/v1/classify", content=body, headers=dict(request.headers), params=params), names)


def test_fuzz_classify_multipart(app):
    before = sum(TALLY.values())
    _classify_multipart(app)
    assert sum(TALLY.values()) - before >= 120


@st.composite
def raw_multipart(draw) -> tuple[bytes, str]:
    """Multipart bodies a client library would not write: boundaries that lie, headers cut."""
    boundary = draw(st.sampled_from(["b0und", "x" * 70, "-", "a b", "é"]))
    sent = draw(st.sampled_from([boundary, boundary, "other", ""]))
    pieces = []
    for _ in range(draw(st.integers(0, 3))):
        disposition = draw(
            st.sampled_from(
                [
                    'form-data; name="file"; filename="p.png"',
                    'form-data; name="file"',
                    "form-data",
                    "form-data; name=\"file\"; filename*=UTF-8''%E2%82%AC.png",
                    "attachment; name=file",
                    "",
                ]
            )
        )
        head = f"Content-Disposition: {disposition}\r\n" if disposition else ""
        if draw(st.booleans()):
            head += "Content-Type: image/png\r\n"
        pieces.append(f"--{sent}\r\n{head}\r\n".encode("utf-8", "replace") + draw(hostile_image()) + b"\r\n")
    ending = draw(st.sampled_from([f"--{sent}--\r\n", "", f"--{sent}", "--\r\n"]))
    body = b"".join(pieces) + ending.encode("utf-8", "replace")
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                f'multipart/form-data; boundary="{boundary}"',
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "MULTIPART/FORM-DATA; BOUNDARY=" + boundary,
                "multipart/mixed; boundary=" + boundary,
            ]
        )
    )
    return body, content_type


@fuzz(100)
@given(case=raw_multipart())
def _classify_raw_multipart(app, case):
    body, content_type = case
    headers = {"content-type": content_type.encode("utf-8")}
    _check_classify(app.post("/v1/classify", content=body, headers=headers), ("p.png", "€.png"))


def test_fuzz_classify_odd_multipart(app):
    before = sum(TALLY.values())
    _classify_raw_multipart(app)
    assert sum(TALLY.values()) - before >= 90


# --- /v2/models/resnet50/infer ---

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
)
names = st.sampled_from(["input_tensor:0", "input_tensor:0", "input_tensor:0", "input", "", "INPUT_TENSOR:0"])
datatypes = st.one_of(st.sampled_from(["FP32", "FP32", "FP32", "UINT8", "FP16", "INT64", "BYTES", "fp32"]), json_leaf)
shapes = st.one_of(
    st.just([1, 3, 224, 224]),
    st.just([2, 3, 224, 224]),
    st.lists(st.sampled_from([0, 1, 3, 224, -1, 2**40]), min_size=0, max_size=6),
    st.sampled_from([[0, 3, 224, 224], [-1, 3, 224, 224], [10**30, 3, 224, 224], [1, 224, 224, 3], [150528]]),
    json_value,
)
fill = st.sampled_from([0.0, 0.5, -123.68, 255, 256, -1, 1e38, -3e38, 1e30, 3.5e38, True, "1", None])


def _rows(shape) -> int:
    """The batch size a shape declares, where a client would send that many images' data."""
    return shape[0] if isinstance(shape, list) and shape and shape[0] in (1, 2) else 1


@st.composite
def v2_data(draw, shape):
    kind = draw(st.sampled_from(["flat", "flat", "nested", "short", "json", "deep", "huge-int"]))
    count = _COUNT * _rows(shape)
    if kind == "flat":
        data = [draw(fill)] * count
        if draw(st.booleans()):  # one odd value among ordinary ones
            data[draw(st.integers(0, count - 1))] = draw(st.one_of(fill, json_leaf))
        return data
    if kind == "nested":
        return np.full((count // _COUNT, 3, 224, 224), draw(st.sampled_from([0.0, 1.5, 1e38]))).tolist()
    if kind == "short":
        return draw(st.lists(st.one_of(fill, json_leaf), max_size=20))
    if kind == "deep":
        return json.loads("[" * 900 + "1" + "]" * 900) if draw(st.booleans()) else [[[[[[1]]]]]] * 3
    if kind == "huge-int":
        return [10 ** draw(st.integers(300, 1000))] * 2
    return draw(json_value)


@st.composite
def v2_request(draw) -> dict:
    """A valid request with none, one or several things wrong (each one on its own reaches a
    different check; none at all reaches the model, with values such as 1e38)."""
    wrong = draw(st.sets(st.sampled_from(["name", "datatype", "shape", "data", "drop", "count", "extras"]), max_size=3))
    shape = draw(shapes) if "shape" in wrong else draw(st.sampled_from([[1, 3, 224, 224], [2, 3, 224, 224]]))
    data = draw(v2_data(shape)) if "data" in wrong else [draw(fill)] * (_COUNT * _rows(shape))
    spec = {
        "name": draw(names) if "name" in wrong else "input_tensor:0",
        "datatype": draw(datatypes) if "datatype" in wrong else "FP32",
        "shape": shape,
        "data": data,
    }
    if "drop" in wrong:
        del spec[draw(st.sampled_from(["name", "datatype", "shape", "data"]))]
    request = {"inputs": [spec] * (draw(st.sampled_from([0, 2, 3])) if "count" in wrong else 1)}
    if "extras" in wrong or draw(st.booleans()):
        request["outputs"] = draw(
            st.one_of(
                st.just([{"name": "softmax_tensor:0"}]),
                st.just([{"name": "ArgMax:0", "parameters": {"binary_data": True}}]),
                st.lists(st.dictionaries(st.sampled_from(["name", "parameters"]), json_value, max_size=2), max_size=3),
                json_value,
            )
        )
        request["parameters"] = draw(
            st.one_of(st.dictionaries(st.sampled_from(["top_k", "binary_data_output"]), json_leaf), json_value)
        )
        request["id"] = draw(json_value)
    return request


@fuzz(180)
@given(request=v2_request())
def _v2_json(app, request):
    _check_v2(app.post(_V2, content=json.dumps(request).encode()))


def test_fuzz_v2_json_requests(app):
    before = sum(TALLY.values())
    _v2_json(app)
    assert sum(TALLY.values()) - before >= 160


_VALID_HEADER = json.dumps(
    {"inputs": [{"name": "input_tensor:0", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.5, 1, 2]}]}
).encode()


@st.composite
def broken_json_text(draw) -> bytes:
    text = _VALID_HEADER
    kind = draw(st.sampled_from(["cut", "flip", "nest", "literal", "encoding", "number"]))
    if kind == "cut":
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "flip":
        at = draw(st.integers(0, len(text) - 1))
        return text[:at] + bytes([text[at] ^ draw(st.integers(1, 255))]) + text[at + 1 :]
    if kind == "nest":
        depth = draw(st.sampled_from([10, 1000, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"1" + closer * depth * draw(st.sampled_from([0, 1]))
    if kind == "literal":
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"1" * 5000]))
        return text.replace(b"0.5", literal)
    if kind == "encoding":
        return draw(
            st.sampled_from([text.decode().encode("utf-16"), b"\xff\xfe\x00", text + b"\x80", b"\xef\xbb\xbf" + text])
        )
    return text.replace(b"[1, 3, 224, 224]", b"[1.0, 3, 224, 224e0]")


@fuzz(80)
@given(body=broken_json_text())
def _v2_text(app, body):
    _check_v2(app.post(_V2, content=body))


def test_fuzz_v2_broken_json_text(app):
    before = sum(TALLY.values())
    _v2_text(app)
    assert sum(TALLY.values()) - before >= 60  # a smaller space: hypothesis stops once it is covered


@st.composite
def v2_binary(draw) -> tuple[bytes, dict]:
    datatype = draw(st.sampled_from(["FP32", "FP32", "UINT8", "FP16", "INT64"]))
    shape = draw(st.one_of(st.just([1, 3, 224, 224]), shapes))
    itemsize = {"FP32": 4, "UINT8": 1, "FP16": 2, "INT64": 8}[datatype]
    need = _COUNT * itemsize
    size = draw(
        st.one_of(st.just(need), st.sampled_from([0, need - 1, need + 1, -need, 2**63, "602112", 602112.0]), json_leaf)
    )
    header = {
        "inputs": [
            {"name": draw(names), "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}
        ]
    }
    if draw(st.booleans()):
        header["outputs"] = [{"name": "softmax_tensor:0", "parameters": {"binary_data": draw(json_leaf)}}]
    head = json.dumps(header).encode()
    fill_value = draw(st.sampled_from([0.0, 1.0, 1e38, float("nan"), float("inf"), -1e39]))
    with np.errstate(over="ignore"):  # -1e39 is -inf in float32: what a client may send
        blob = np.full(_COUNT, fill_value, "<f4").tobytes() if itemsize == 4 else bytes(need)
    blob = blob[: draw(st.sampled_from([len(blob), len(blob) - 1, 0, len(blob) // 2]))]
    if draw(st.booleans()):
        blob += draw(st.binary(max_size=9))
    length = draw(
        st.one_of(
            st.just(str(len(head))),
            st.sampled_from(["0", "-1", str(len(head) + 1), str(len(head) - 1), "abc", " 12", "1e3", str(10**30), ""]),
        )
    )
    return head + blob, {"Inference-Header-Content-Length": length, "Content-Type": "application/octet-stream"}


@fuzz(120)
@given(case=v2_binary())
def _v2_binary(app, case):
    body, headers = case
    _check_v2(app.post(_V2, content=body, headers=headers))


def test_fuzz_v2_binary_extension(app):
    before = sum(TALLY.values())
    _v2_binary(app)
    assert sum(TALLY.values()) - before >= 110
