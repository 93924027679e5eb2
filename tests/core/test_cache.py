"""The cache: checksums of the user's files are remembered there, not beside the files."""

from __future__ import annotations

import json
import os


def test_md5_memo_of_a_users_file_goes_into_the_cache(tmp_path, monkeypatch):
    import hashlib

    from resnet50.core.cache import file_md5, md5_memo_path

    monkeypatch.setenv("RESNET50_HOME", os.fspath(tmp_path / "cache"))
    model = tmp_path / "mine" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"not really a model")
    assert file_md5(model) == hashlib.md5(b"not really a model").hexdigest()
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.onnx"]  # nothing written beside it
    memo = md5_memo_path(model)
    assert memo.is_relative_to(tmp_path / "cache") and json.loads(memo.read_text())["md5"] == file_md5(model)
