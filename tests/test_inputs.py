"""Hostile files and folders: special files, symlink loops, size caps, empty folders, damaged
outputs to resume, decoder noise, lying headers, and what a bad model leaves in the cache."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from resnet50 import InvalidInputError, preprocess
from resnet50.apps.batch import run_batch
from resnet50.apps.pipeline import classify_stream
from resnet50.cli import main
from resnet50.core.samples import synthetic_image, write_jpegs
from resnet50.processing.preprocess import read_bytes
from watchdog import release, within


@pytest.fixture
def hostile(tmp_path) -> dict:
    """A good JPEG, a FIFO named like an image, a symlink loop, a socket, a folder holding a FIFO."""
    good = write_jpegs(tmp_path / "good", 2, seed=3)
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    sock_path = tmp_path / "s.png"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(sock_path))
    inner = tmp_path / "folder"
    inner.mkdir()
    os.mkfifo(inner / "inner.png")
    write_jpegs(inner, 1, seed=4)
    yield {
        "good": [os.fspath(p) for p in good],
        "fifo": os.fspath(fifo),
        "loop": os.fspath(loop),
        "socket": os.fspath(sock_path),
        "folder": os.fspath(inner),
        "inner_fifo": os.fspath(inner / "inner.png"),
        "fifos": [os.fspath(fifo), os.fspath(inner / "inner.png")],
    }
    sock.close()


# --- reading ---------------------------------------------------------------------------------
# /dev/zero is read only in a subprocess with capped memory (below): code that reads it whole
# would take the machine's memory, not fail.


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


def test_pipeline_reports_special_files_and_classifies_the_rest(model_fp32, hostile):
    inputs = [hostile["fifo"], hostile["good"][0], hostile["loop"], "/dev/null", hostile["good"][1]]
    results = within(lambda: list(classify_stream(model_fp32, inputs, batch_size=2)), fifos=hostile["fifos"])
    assert [r.ok for r in results] == [False, True, False, False, True]
    assert results[0].error.startswith(f"{hostile['fifo']}: is a FIFO")
    assert results[2].error.startswith(f"{hostile['loop']}: symbolic link loop")
    assert results[3].error.startswith("/dev/null: is a character device")
    assert [r.classification for r in results if r.ok] == model_fp32.classify(hostile["good"])


def test_pipeline_size_cap(model_fp32, tmp_path):
    big = tmp_path / "big.png"
    assert cv2.imwrite(os.fspath(big), np.random.default_rng(0).integers(0, 256, (800, 800, 3), np.uint8))
    small = write_jpegs(tmp_path / "s", 1, seed=7)[0]
    results = list(classify_stream(model_fp32, [big, small], max_file_mb=1.0))
    assert results[0].error == f"{big}: {big.stat().st_size:,} bytes, more than the 1 MB limit for input " \
        "files (raise it with --max-file-mb)"  # fmt: skip
    assert results[1].ok


# --- command line ----------------------------------------------------------------------------


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


# --- batch -----------------------------------------------------------------------------------


def test_batch_writes_every_row_next_to_special_files(model_fp32, hostile, tmp_path):
    folder = Path(hostile["folder"])
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    out = tmp_path / "rows.jsonl"
    summary = within(run_batch, folder, out, model=model_fp32, fifos=hostile["fifos"])
    rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert (summary.classified, summary.errors) == (1, 2)
    assert rows[hostile["inner_fifo"]]["error"].startswith(f"{hostile['inner_fifo']}: is a FIFO")
    assert rows[os.fspath(folder / "loop.jpg")]["error"].startswith(f"{folder / 'loop.jpg'}: symbolic link loop")


def test_batch_refuses_a_special_output_without_opening_it(model_fp32, hostile, tmp_path, capsys):
    argv = ["batch", hostile["good"][0], "-o", hostile["fifo"].replace(".jpg", ".csv")]
    os.mkfifo(argv[-1])
    assert within(main, [*argv, "--overwrite"], fifos=[argv[-1]]) == 2
    assert capsys.readouterr().err.strip() == f"resnet50 batch: error: {argv[-1]}: is a FIFO (named pipe), not " \
        "a results file; only regular files are read"  # fmt: skip


def _parquet_bytes(rows: int = 2) -> bytes:
    import io

    import pyarrow.parquet as pq

    from resnet50.apps.batch.rows import make_row, to_table

    buf = io.BytesIO()
    pq.write_table(to_table([make_row(f"/x/{i}.jpg", None, "gone", "synthetic") for i in range(rows)]), buf)
    return buf.getvalue()


DAMAGED = {
    "bad line.jsonl": (b'{"path": "/a.jpg", "class_id": null}\nnot json at all\n', "line 1 is not a result row"),
    "not json.jsonl": (b"[1, 2]\n{oops\n", "line 1 is not a result row"),
    "no path.csv": (b"file,label\n/a.jpg,cat\n", "its header is 'file,label', not 'path,class_id,"),
    "short row.csv": (b"path,class_id,label,score,top_k_ids,top_k_scores,error,weights\n/a.jpg,3\n", "row 2 has 2"),
    "broken.parquet": (b"PAR1 this is not parquet", "not a readable Parquet file"),
    "cut.parquet": (None, "not a readable Parquet file"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_resume_on_a_damaged_output_is_one_line_and_leaves_it_untouched(name, hostile, tmp_path, capsys):
    content, why = DAMAGED[name]
    if content is None:
        content = _parquet_bytes()[:-20]
    out = tmp_path / name.replace(" ", "_")
    out.write_bytes(content)
    argv = ["batch", hostile["good"][0], "-o", os.fspath(out), "--resume"]
    for extra in ([], ["--retry-errors"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"resnet50 batch: error: {out}: cannot resume it: ")
        assert why in err[0] and "left as it is" in err[0]
        assert out.read_bytes() == content


def test_resume_on_damaged_parquet_parts_leaves_them_untouched(hostile, tmp_path, capsys):
    from resnet50.apps.batch.writers import parts_dir

    out = tmp_path / "r.parquet"
    parts = parts_dir(out)
    parts.mkdir()
    (parts / "part-000001.parquet").write_bytes(_parquet_bytes())
    (parts / "part-000002.parquet").write_bytes(b"PAR1 garbage")
    before = {p.name: p.read_bytes() for p in parts.iterdir()}
    assert main(["batch", hostile["good"][0], "-o", os.fspath(out), "--resume"]) == 2
    assert f"{parts / 'part-000002.parquet'}: cannot resume it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in parts.iterdir()} == before and not out.exists()


# --- decoder noise ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def noisy_images() -> dict[str, bytes]:
    """Files whose decoding makes libpng, libjpeg, libtiff or OpenCV print to stderr."""
    image = synthetic_image(11, 48, 64)
    png = cv2.imencode(".png", image)[1].tobytes()
    jpeg = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    jpeg[-60:-10] = b"\x00" * 50  # data after the scan: "Corrupt JPEG data: extraneous bytes"
    tiff = bytearray(cv2.imencode(".tiff", image)[1].tobytes())
    tiff[len(tiff) // 2 : len(tiff) // 2 + 40] = b"\xff" * 40
    return {
        "iccp.png": png[:33] + _chunk(b"iCCP", b"x\x00") + png[33:],  # libpng warning, decodes
        "cut.png": png[: len(png) // 2] + png[-12:],  # libpng error: Not enough image data
        "ihdr.png": b"\x89PNG\r\n\x1a\n" + b"x" * 40 + _chunk(b"IEND", b""),  # OpenCV: IHDR chunk shall be first
        "extra.jpg": bytes(jpeg),
        "bad.tiff": bytes(tiff),
    }


def test_decoder_noise_never_reaches_the_terminal(capfd, tmp_path):
    outcomes = {}
    for name, data in noisy_images().items():
        path = tmp_path / name
        path.write_bytes(data)
        try:
            preprocess(os.fspath(path))
            outcomes[name] = "ok"
        except InvalidInputError as exc:
            assert str(exc).startswith(f"{path}: ")
            outcomes[name] = str(exc).removeprefix(f"{path}: ")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # fd level: what C code writes is caught too
    assert outcomes["iccp.png"] == "ok"
    assert outcomes["cut.png"] == "not a decodable image (corrupt PNG data)"  # IEND kept: libpng finds the cut
    assert outcomes["ihdr.png"] == "not a decodable image (corrupt PNG data)"


def test_quiet_native_is_thread_safe_and_keeps_python_writes(capfd):
    """Several threads decode noisy files while another thread writes to sys.stderr: every Python
    line arrives, no library line does, and C stdio's stderr works again afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    from resnet50.processing.preprocess import decode

    noisy = list(noisy_images().values()) * 20
    stop = threading.Event()

    def writer():
        for i in range(200):
            sys.stderr.write(f"python line {i}\n")
            sys.stderr.flush()
        stop.set()

    def decode_quietly(data):
        try:
            decode(data)
        except InvalidInputError:
            return

    thread = threading.Thread(target=writer)
    with ThreadPoolExecutor(4) as pool:
        thread.start()
        list(pool.map(decode_quietly, noisy))
        thread.join()
    err = capfd.readouterr().err.splitlines()
    assert err == [f"python line {i}" for i in range(200)]
    cv2.imdecode(np.frombuffer(noisy_images()["iccp.png"], np.uint8), cv2.IMREAD_COLOR)  # outside: not silenced
    assert "libpng warning: iCCP: too short" in capfd.readouterr().err


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


# --- lying headers ---------------------------------------------------------------------------


def test_a_header_declaring_gigapixels_is_refused_before_decoding(tmp_path):
    jpeg = bytearray(cv2.imencode(".jpg", synthetic_image(12, 40, 40))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 20_000, 20_000)  # libjpeg would fill 1.2 GB with gray
    path = tmp_path / "lie.jpg"
    path.write_bytes(jpeg)
    with pytest.raises(InvalidInputError) as info:
        preprocess(os.fspath(path))
    assert str(info.value) == f"{path}: JPEG header declares 20000x20000 (400.0 megapixels); at most 100 " \
        "megapixels are decoded"  # fmt: skip


# --- small items -----------------------------------------------------------------------------


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
