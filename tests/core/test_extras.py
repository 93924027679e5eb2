"""Every command with each optional extra's modules hidden (as on a plain ``pip install .``):
what does not need the extra still works, and what needs it prints one line naming it, exit 2,
leaving no partial output."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from resnet50.cli import COMMANDS

#: The modules each extra installs (pyproject.toml), hidden together.
EXTRAS = {
    "serve": ["fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "httptools", "uvloop"],
    "grpc": ["grpc", "tritonclient"],
    "openvino": ["openvino"],
    "mlperf": ["mlperf_loadgen"],
    "parquet": ["pyarrow"],
    "ray": ["ray", "pyarrow", "pandas"],
    "bench": ["matplotlib", "psutil"],
    "torch": ["torch"],
    "cuda": ["torch", "torchvision"],
}
#: Extras whose modules others include: hiding "ray" hides pyarrow, what "parquet" installs, too.
PROVIDED_BY = {"parquet": ("parquet", "ray"), "torch": ("torch", "cuda"), "cuda": ("cuda", "torch")}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


PLAIN = "plain install"  # every extra hidden at once


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_fp32) -> dict:
    """A tiny ImageNet-layout folder, and a loopback server holding a file for ``fetch``."""
    from resnet50.core.samples import write_jpegs

    root = tmp_path_factory.mktemp("extras")
    images = write_jpegs(root / "tiny", 3, seed=31)
    (root / "tiny" / "val_map.txt").write_text("".join(f"{p.name} 0\n" for p in images))
    (root / "www").mkdir()
    (root / "www" / "m.onnx").write_bytes(b"a model, as far as fetch can tell")
    (root / "junk.pth").write_bytes(b"not a checkpoint")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=root / "www"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {
        "root": root,
        "image": os.fspath(images[0]),
        "url": f"http://127.0.0.1:{httpd.server_address[1]}/m.onnx",
        "md5": hashlib.md5(b"a model, as far as fetch can tell").hexdigest(),
    }
    httpd.shutdown()


def _invocations(setup: dict, out: Path, hidden: str) -> list[tuple[list[str], tuple[str, ...]]]:
    """(argv, the extras it needs, in the order it checks them) for every command, plus each
    extra-only form."""
    tiny = os.fspath(setup["root"] / "tiny")
    cache = ["--cache", os.fspath(out / "cache")]
    runs = [
        (["classify", setup["image"], "--top", "1"], ()),
        (["info"], ()),
        (["weights"], ()),
        (
            [
                "classify",
                setup["image"],
                "--weights",
                "torchvision-v1",
                "--model",
                os.fspath(setup["root"] / "junk.pth"),
            ],
            ("torch",),
        ),
        (["fetch", "--url", setup["url"], "--md5", setup["md5"], "--output", os.fspath(out / "m.onnx")], ()),
        (["export", os.fspath(out / "e.onnx")], ()),
        (["bench", "--precision", "fp32", "--duration", "0.2", "--warmup", "0"], ()),
        (["eval", "--dataset", tiny, *cache], ()),
        (
            ["mlperf", "--dataset", tiny, "--mode", "accuracy", "--output", os.fspath(out / "mlperf"), *cache],
            ("mlperf",),
        ),
        (["batch", tiny, "-o", os.fspath(out / "b.csv")], ()),
        (["batch", tiny, "-o", os.fspath(out / "b.jsonl")], ()),
        (["batch", tiny, "-o", os.fspath(out / "b.parquet")], ("parquet",)),
        (["info", "--backend", "openvino"], ("openvino",)),
        (["info", "--device", "cuda"], ("cuda",)),
    ]
    if hidden in ("ray", PLAIN):  # real Ray runs are tested in test_batch.py and test_ray_serve.py
        runs.append((["batch", tiny, "-o", os.fspath(out / "r.csv"), "--engine", "ray"], ("ray",)))
        runs.append((["serve", "--port", str(_free_port()), "--engine", "ray"], ("serve", "ray")))
    if hidden in ("openvino", PLAIN):
        runs.append((["info", "--precision", "bf16"], ("openvino",)))
    if hidden in ("grpc", PLAIN):  # a real gRPC server is tested in tests/apps/serve/test_grpc.py
        runs.append((["serve", "--port", str(_free_port()), "--grpc-port", "0"], ("serve", "grpc")))
    runs.append((["serve", "--port", str(_free_port())], ("serve",)))  # last: it runs until stopped
    assert {argv[0] for argv, _ in runs} == set(COMMANDS)
    return runs


def _first_missing(needed: tuple[str, ...], hidden: str) -> str | None:
    """The first of ``needed`` whose modules the ``hidden`` run hides: the extra the command names."""
    return next((e for e in needed if hidden == PLAIN or hidden in PROVIDED_BY.get(e, (e,))), None)


@pytest.mark.slow
@pytest.mark.parametrize("hidden", [PLAIN, *EXTRAS])
def test_every_command_with_an_extra_hidden(hidden, setup, tmp_path):
    pytest.importorskip("fastapi", reason="the server's own run needs the serve extra installed")
    modules = sorted({m for ms in EXTRAS.values() for m in ms}) if hidden == PLAIN else EXTRAS[hidden]
    runs = _invocations(setup, tmp_path, hidden)
    runner = Path(__file__).parents[1] / "extras_runner.py"
    proc = subprocess.run(
        [sys.executable, os.fspath(runner), ",".join(modules), json.dumps([argv for argv, _ in runs])],
        capture_output=True, text=True, timeout=900, env=os.environ,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["hidden_but_imported"] == []
    for (argv, needed), result in zip(runs, report["results"]):
        err = result["stderr"]
        assert "Traceback" not in err, (argv, err)
        extra = _first_missing(needed, hidden)
        if extra is not None:
            assert result["code"] == 2, (argv, err)
            named = re.search(r"pip install '?resnet50\[([\w,]+)\]", err)
            assert err.count("\n") == 1 and named and extra in named.group(1).split(","), (argv, err)
            assert err.startswith(f"resnet50 {argv[0]}: error: "), (argv, err)
        elif needed == ("cuda",):  # torch is here; a GPU may not be
            assert result["code"] == 0 or "no CUDA device available" in err, (argv, err)
        elif needed == ("torch",):  # torch is here: it reads the junk file and says what is wrong
            assert result["code"] == 2 and "not a readable PyTorch checkpoint" in err, (argv, err)
        elif needed == ("openvino",) and result["code"] == 2:  # a CPU without bf16 says so
            assert "bf16" in err, (argv, err)
        else:
            assert result["code"] == 0, (argv, err)
    assert not (tmp_path / "b.parquet").exists() or _first_missing(("parquet",), hidden) is None
    assert not any(p.name.startswith(".b.parquet") or p.name == "r.csv" for p in tmp_path.iterdir())
    assert (tmp_path / "b.csv").read_text().count("\n") == 4 and (tmp_path / "b.jsonl").read_text().count("\n") == 3
