"""Reading input files: only regular files, at most --max-file-mb, and folders that hold nothing named."""

from __future__ import annotations

import os

import pytest

from hostile import special_files, within
from resnet50 import InvalidInputError, preprocess
from resnet50.apps.pipeline import classify_stream
from resnet50.cli import main
from resnet50.core.samples import write_jpegs
from resnet50.processing.preprocess import read_bytes


@pytest.fixture
def hostile(tmp_path) -> dict:
    with special_files(tmp_path) as files:
        yield files


def test_special_files_are_refused_by_name_without_being_opened(hostile):
    cases = {
        hostile["fifo"]: "is a FIFO (named pipe), not an image; only regular files are read",
        "/dev/null": "is a character device, not an image; only regular files are read",
        hostile["socket"]: "is a socket, not an image; only regular files are read",
        hostile["loop"]: "symbolic link loop (too many levels of symbolic links)",
        hostile["folder"]: "is a directory, not an image; only regular files are read",
    }
    for path, message in cases.items():
        with pytest.raises(InvalidInputError) as info:
            within(preprocess, path, fifos=hostile["fifos"])
        assert str(info.value) == f"{path}: {message}"


def test_file_size_cap_is_a_clear_error(tmp_path):
    path = write_jpegs(tmp_path, 1, seed=5)[0]
    size = path.stat().st_size
    assert read_bytes(path, size) == path.read_bytes()  # exactly at the limit is fine
    with pytest.raises(InvalidInputError) as info:
        read_bytes(path, 1 << 14)
    assert str(info.value) == f"{path}: {size:,} bytes, more than the 0.0156 MB limit for input files " \
        "(raise it with --max-file-mb)"  # fmt: skip
    with pytest.raises(InvalidInputError, match="more than the"):
        read_bytes(path, size - 1)
    with pytest.raises(InvalidInputError, match="the input file size limit must be positive, got 0 MB"):
        list(classify_stream(None, [path], max_file_mb=0))


def test_unreadable_file_is_one_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = write_jpegs(tmp_path, 1, seed=6)[0]
    path.chmod(0)
    with pytest.raises(InvalidInputError, match=f"{path}: permission denied"):
        read_bytes(path)


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_eval_and_bench_refuse_an_empty_folder_by_name(command, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    images = write_jpegs(tmp_path / "full", 1, seed=8)
    argv = ["eval", "--compare", "fp32", "--images", os.fspath(images[0]), os.fspath(tmp_path / "empty")]
    if command == "bench":
        argv = ["bench", "--mode", "e2e", "--images", os.fspath(tmp_path / "empty")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'empty'}: folder holds no image files " \
        "(.bmp, .jpe, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)")  # fmt: skip
