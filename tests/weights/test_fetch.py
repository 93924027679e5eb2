"""``fetch`` against a local HTTP server on loopback (resume, checksum, offline)."""

from __future__ import annotations

import hashlib
import threading
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
