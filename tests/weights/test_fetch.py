"""``fetch`` against a local HTTP server on loopback (resume, checksum, offline)."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from resnet50 import ChecksumError, DownloadError
from resnet50.weights.fetch import fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    requests: ClassVar[list[str | None]] = []

    def do_GET(self):
        range_header = self.headers.get("Range")
        type(self).requests.append(range_header)
        start = int(range_header.split("=")[1].rstrip("-")) if range_header else 0
        body = PAYLOAD[start:]
        self.send_response(206 if range_header else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/resnet50_v1.onnx"
    httpd.shutdown()


def test_download_verifies_and_moves_atomically(server, tmp_path):
    dest = tmp_path / "model.onnx"
    assert fetch(url=server, md5=MD5, dest=dest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "model.onnx.part").exists()
    fetch(url=server, md5=MD5, dest=dest, progress=False)  # already there: no second request
    assert _Handler.requests == [None]


def test_partial_download_is_resumed(server, tmp_path):
    dest = tmp_path / "model.onnx"
    (tmp_path / "model.onnx.part").write_bytes(PAYLOAD[:300_000])
    fetch(url=server, md5=MD5, dest=dest, progress=False)
    assert _Handler.requests == ["bytes=300000-"] and dest.read_bytes() == PAYLOAD


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    dest = tmp_path / "model.onnx"
    with pytest.raises(ChecksumError, match=f"has md5 {MD5}, expected 0+"):
        fetch(url=server, md5="0" * 32, dest=dest, progress=False)
    assert not dest.exists() and not (tmp_path / "model.onnx.part").exists()


def test_offline_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / "model.onnx"
    with pytest.raises(DownloadError) as info:
        fetch(url="http://127.0.0.1:9/resnet50_v1.onnx", dest=dest, timeout=2, progress=False)
    message = str(info.value)
    assert "could not download http://127.0.0.1:9/resnet50_v1.onnx" in message
    assert f"put it at {dest}" in message and "f6a4da60cd5f084d97efc2c1ddb10beb" in message


class _Flood(BaseHTTPRequestHandler):
    """Sends ``body_size`` bytes, announcing ``announce`` as Content-Length (None: no length,
    the body ends when the connection closes, as HTTP/1.0 allows)."""

    protocol_version = "HTTP/1.0"
    announce: ClassVar[int | None] = None
    body_size: ClassVar[int] = 0
    sent: ClassVar[list[int]] = []

    def do_GET(self):
        self.send_response(200)
        if self.announce is not None:
            self.send_header("Content-Length", str(self.announce))
        self.end_headers()
        chunk, sent = b"\x00" * (1 << 16), 0
        try:
            while sent < self.body_size:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:  # the client stopped reading and hung up
            pass
        type(self).sent.append(sent)

    def log_message(self, *args):
        pass


@pytest.fixture
def flood():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    _Flood.sent = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/resnet50_v1.onnx"
    httpd.shutdown()


def test_a_download_growing_past_the_cap_is_stopped_and_deleted(flood, tmp_path):
    _Flood.announce, _Flood.body_size = None, 8 << 20
    dest = tmp_path / "model.onnx"
    with pytest.raises(DownloadError) as info:
        fetch(url=flood, md5=MD5, dest=dest, progress=False, max_bytes=1 << 20)
    assert str(info.value) == (
        f"{flood}: the download grew past the 1,048,576 bytes a weights file may have (the registry's files are "
        "about 100 MB); stopped and deleted the partial download. Is the URL right?"
    )
    assert sorted(tmp_path.iterdir()) == []


def test_a_content_length_over_the_cap_is_refused_before_reading(flood, tmp_path):
    _Flood.announce, _Flood.body_size = 150_000_000, 1 << 20
    with pytest.raises(DownloadError, match=r"the server announces 150,000,000 bytes, more than the 117,440,512 "):
        fetch(url=flood, md5=MD5, dest=tmp_path / "model.onnx", progress=False)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_endless_download_stops_at_the_default_cap(flood, tmp_path):
    """150 MB, no Content-Length: before, all of it was written before the md5 check."""
    from resnet50.weights.fetch import MAX_DOWNLOAD_BYTES

    _Flood.announce, _Flood.body_size = None, 150_000_000
    with pytest.raises(DownloadError, match="the download grew past the 117,440,512 bytes"):
        fetch(url=flood, md5=MD5, dest=tmp_path / "model.onnx", progress=False)
    assert sorted(tmp_path.iterdir()) == []
    for _ in range(100):  # the server notices the hang-up on its next write
        if _Flood.sent:
            break
        time.sleep(0.1)
    assert MAX_DOWNLOAD_BYTES < _Flood.sent[0] + (1 << 20) < 150_000_000  # the client hung up early
