"""Derived model files: a user's model that ONNX Runtime cannot run leaves nothing in the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnet50.cli import main
from resnet50.core.samples import write_jpegs


def _broken_model(path: Path, source: Path) -> Path:
    """The synthetic model with one weight of the wrong shape: ONNX Runtime loads it, then fails to run it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(source)
    for tensor in model.graph.initializer:
        if tensor.name == "layer1.0.conv2.weight":
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).reshape(32, 128, 3, 3), tensor.name))
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("argv", [["info", "--native"], ["classify", "IMAGE"], ["export", "OUT", "--native"]])
def test_a_model_that_cannot_run_is_refused_by_its_name_and_leaves_nothing_cached(
    argv, model_fp32, tmp_path, monkeypatch, capsys
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNET50_HOME", os.fspath(cache))
    bad = _broken_model(tmp_path / "bad.onnx", model_fp32.source.path)
    image = write_jpegs(tmp_path / "img", 1, seed=13)[0]
    argv = [{"IMAGE": os.fspath(image), "OUT": os.fspath(tmp_path / "out.onnx")}.get(a, a) for a in argv]
    assert main([*argv, "--model", os.fspath(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"resnet50 {argv[0]}: error: {bad}: ONNX Runtime cannot run this model: ")
    assert not (cache / "variants").exists() and not (tmp_path / "out.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "cache", "img"]
