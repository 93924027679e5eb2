"""The ``resnet50`` command as a user runs it (subprocesses, real exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import onnx
import pytest


def resnet50(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnet50", *args], capture_output=True, text=True, timeout=300, env=os.environ, **kw
    )


def test_classify_photos_top5_json(model_fp32, sample_photos):
    start = time.perf_counter()
    proc = resnet50("classify", *map(str, sample_photos[:2]), "--json")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["weights"] == "synthetic" and payload["errors"] == 0
    expected = model_fp32.classify([str(p) for p in sample_photos[:2]])
    for row, want in zip(payload["results"], expected):
        assert [p["class_id"] for p in row["predictions"]] == [p.class_id for p in want.predictions]
    assert "SYNTHETIC weights" in proc.stderr
    print(f"classify, 2 photos, cached model: {elapsed:.2f}s")


def test_classify_bad_files_exit_2_and_keep_going(sample_photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    proc = resnet50("classify", str(bad), str(sample_photos[0]), str(tmp_path / "gone.png"), "--top", "3")
    assert proc.returncode == 2
    assert f"error: {bad}: not a decodable image" in proc.stderr
    assert f"error: {tmp_path / 'gone.png'}: no such file" in proc.stderr
    assert str(sample_photos[0]) in proc.stdout and proc.stdout.count("(class ") == 3
    assert "Traceback" not in proc.stderr


def test_classify_folder(tmp_path):
    from resnet50.core.samples import write_jpegs

    write_jpegs(tmp_path, 3)
    proc = resnet50("classify", str(tmp_path), "--json", "--top", "1")
    assert proc.returncode == 0
    assert [r["source"] for r in json.loads(proc.stdout)["results"]] == [
        str(tmp_path / f"img_0000{i}.jpg") for i in range(3)
    ]


def test_bad_model_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"\x00" * 100)
    proc = resnet50("info", "--model", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"resnet50 info: error: {path}: not a readable ONNX model")


def test_bad_top_k():
    proc = resnet50("classify", "x.jpg", "--top", "0")
    assert proc.returncode == 2 and "--top must be in 1..1000" in proc.stderr


def test_info_json(model_fp32):
    proc = resnet50("info", "--json")
    info = json.loads(proc.stdout)
    assert info["weights"] == "synthetic" and info["md5"] == model_fp32.source.md5
    assert info["threads"] >= 1 and "features" in info["cpu"]


@pytest.mark.parametrize("native", [False, True])
def test_export_writes_the_model_that_runs(tmp_path, native):
    path = tmp_path / "out.onnx"
    proc = resnet50("export", str(path), *(["--native"] if native else []))
    assert proc.returncode == 0, proc.stderr
    inputs = [i.name for i in onnx.load(str(path)).graph.input if i.name not in {"top_k"}]
    initializers = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert [i for i in inputs if i not in initializers] == (["input_uint8"] if native else ["input_tensor:0"])


def test_fetch_offline_is_one_clear_line(tmp_path):
    proc = resnet50(
        "fetch", "--url", "http://127.0.0.1:9/m.onnx", "--output", str(tmp_path / "m.onnx"), "--timeout", "2"
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "could not download http://127.0.0.1:9/m.onnx" in proc.stderr


@pytest.mark.slow
def test_every_subcommand_has_help():
    from resnet50.cli import COMMANDS

    proc = resnet50("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        sub = resnet50(name, "--help")
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: resnet50 {name}"), name
        assert name == "serve" or "--json" in sub.stdout, name


def test_export_to_an_unwritable_path_is_one_line(tmp_path):
    proc = resnet50("export", str(tmp_path / "missing" / "x.onnx"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"resnet50 export: error: {tmp_path / 'missing' / 'x.onnx'}")
    assert "Traceback" not in proc.stderr


def test_fetch_to_an_impossible_folder_is_one_line(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = resnet50("fetch", "--output", str(blocker / "m.onnx"), "--url", "http://127.0.0.1:9/m.onnx")
    assert proc.returncode == 2 and f"{blocker}: cannot create the download folder" in proc.stderr


@pytest.mark.slow
def test_a_reader_that_goes_away_stops_the_command_quietly():
    """``resnet50 weights | head -1``: no BrokenPipeError traceback, the exit code a shell expects (141)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet50", "weights"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and stderr == ""
