"""Building the synthetic-weights model: it says what it does, and writes the same file as ever."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from resnet50.core.progress import progress_mode

BUILD_LINE = "resnet50: building the synthetic-weights model (first run only)"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bar", "line", "off"])
def test_synthetic_build_says_what_it_does_and_writes_the_same_file(mode, model_fp32, tmp_path, capsys):
    from resnet50.weights.synthetic import build_synthetic

    with progress_mode(mode):
        path = build_synthetic(tmp_path / "synthetic.onnx")
    err = capsys.readouterr().err
    assert _md5(path) == model_fp32.source.md5  # memory-light, and still the same bytes
    if mode == "bar":
        assert BUILD_LINE in err and "49/49" in err
    else:
        assert err == ("" if mode == "off" else BUILD_LINE + " ...\n")
