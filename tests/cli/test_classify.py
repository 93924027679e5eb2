"""``resnet50 classify`` on hostile inputs: special files, empty and unlistable folders, size caps,
decoder noise. In-process (``resnet50.cli.main``) except where the real exit and memory matter."""

from __future__ import annotations

import json
import os
import sys

import pytest

from hostile import noisy_images, release, special_files, within
from resnet50.apps.batch import run_batch
from resnet50.cli import main
from resnet50.core.samples import write_jpegs


@pytest.fixture
def hostile(tmp_path) -> dict:
    with special_files(tmp_path) as files:
        yield files


def test_classify_names_special_files_and_empty_folders_and_runs_the_rest(hostile, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["classify", hostile["fifo"], hostile["folder"], os.fspath(empty), hostile["loop"], *hostile["good"]]
    code = within(main, [*argv, "--top", "1", "--json"], fifos=hostile["fifos"])
    captured = capsys.readouterr()
    assert code == 2
    payload = json.loads(captured.out)
    errors = [line for line in captured.err.splitlines() if line.startswith("resnet50 classify: error: ")]
    assert errors[0] == f"resnet50 classify: error: {empty}: folder holds no image files " \
        "(.bmp, .jpe, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)"  # fmt: skip
    assert payload["problems"] == [errors[0].removeprefix("resnet50 classify: error: ")]
    by_source = {r["source"]: r for r in payload["results"]}
    assert by_source[hostile["fifo"]]["error"].startswith(f"{hostile['fifo']}: is a FIFO")
    assert by_source[hostile["inner_fifo"]]["error"].startswith(f"{hostile['inner_fifo']}: is a FIFO")
    assert by_source[hostile["loop"]]["error"].startswith(f"{hostile['loop']}: symbolic link loop")
    assert all("predictions" in by_source[p] for p in hostile["good"])
    assert payload["errors"] == 4 and "Traceback" not in captured.err


def test_only_empty_folders_is_one_line(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(["classify", os.fspath(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == f"resnet50 classify: error: {tmp_path / 'a'}: folder holds no " \
        "image files (.bmp, .jpe, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)"  # fmt: skip


def test_classify_max_file_mb(tmp_path, capsys):
    path = write_jpegs(tmp_path, 1, seed=9)[0]
    assert main(["classify", os.fspath(path), "--max-file-mb", "0.001"]) == 2
    assert f"resnet50 classify: error: {path}: {path.stat().st_size:,} bytes, more than the 0.001 MB limit" in (
        capsys.readouterr().err
    )
    assert main(["classify", os.fspath(path), "--max-file-mb", "-1"]) == 2
    assert capsys.readouterr().err.strip().endswith("the input file size limit must be positive, got -1.0 MB " \
        "(--max-file-mb)")  # fmt: skip


@pytest.mark.slow
def test_cli_on_special_files_neither_hangs_nor_exhausts_memory(hostile):
    """As a user runs it: a FIFO, a folder holding one, /dev/zero and a symlink loop next to good
    files. Before, the FIFO hung forever and /dev/zero was read until MemoryError."""
    import resource
    import subprocess

    def capped_memory():  # reading /dev/zero whole would fail here, not take the machine
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    argv = [hostile["fifo"], hostile["folder"], "/dev/zero", hostile["loop"], *hostile["good"]]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "resnet50", "classify", *argv, "--top", "1"],
            capture_output=True, text=True, timeout=120, preexec_fn=capped_memory,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        for fifo in hostile["fifos"]:
            release(fifo)
        pytest.fail("classify hung on a special file")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("resnet50 classify: error:")]
    assert len(errors) == 4
    assert proc.stdout.count("(class ") == 3  # the two good files and the folder's JPEG


def test_cli_classify_prints_only_our_lines_for_noisy_files(tmp_path, capfd):
    paths = []
    for name, data in noisy_images().items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    assert main(["classify", *map(os.fspath, paths), "--top", "1"]) == 2
    err = capfd.readouterr().err.splitlines()
    ours = [line for line in err if line.startswith("resnet50 classify: error: ") or line.startswith("resnet50: ")]
    assert ours == err  # nothing but our own lines, each naming its file
    assert all(any(os.fspath(p) in line for p in paths) for line in err if "error:" in line)


@pytest.fixture
def unlistable(tmp_path, monkeypatch) -> dict:
    """A folder with a good JPEG and a subfolder that cannot be listed (as without read permission:
    root could list it, so the listing itself is made to fail)."""
    top = tmp_path / "photos"
    good = write_jpegs(top, 1, seed=14)[0]
    locked = top / "locked"
    write_jpegs(locked, 1, seed=15)
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    return {"top": top, "good": good, "locked": locked}


def test_an_unlistable_subfolder_is_named_and_the_rest_runs(model_fp32, unlistable, tmp_path, capsys):
    assert main(["classify", os.fspath(unlistable["top"]), "--top", "1"]) == 2
    captured = capsys.readouterr()
    assert f"resnet50 classify: error: {unlistable['locked']}: cannot list the folder (Permission denied)" in (
        captured.err
    )
    assert os.fspath(unlistable["good"]) in captured.out
    out = tmp_path / "rows.csv"
    summary = run_batch(unlistable["top"], out, model=model_fp32)
    assert (summary.classified, summary.errors) == (1, 1)
    assert f"{unlistable['locked']},,,,[],[],{unlistable['locked']}: cannot list the folder" in out.read_text()
