"""Every command with each optional extra's modules hidden (as on a plain ``pip install .``):
what does not need the extra still works, and what needs it prints one line naming it, exit 2,
leaving no partial output."""

from __future__ import annotations

import hashlib
import json
import os
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
    "serve": ["fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "PIL", "httptools", "uvloop"],
    "openvino": ["openvino"],
    "mlperf": ["mlperf_loadgen"],
    "parquet": ["pyarrow"],
    "ray": ["ray", "pyarrow", "pandas"],
    "bench": ["matplotlib", "psutil"],
    "cuda": ["torch", "torchvision"],
}
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
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=root / "www"))
    httpd.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {
        "root": root,
        "image": os.fspath(images[0]),
        "url": f"http://127.0.0.1:{httpd.server_address[1]}/m.onnx",
        "md5": hashlib.md5(b"a model, as far as fetch can tell").hexdigest(),
    }
    httpd.shutdown()


def _invocations(setup: dict, out: Path, hidden: str) -> list[tuple[list[str], str | None]]:
    """(argv, the extra it needs or None) for every command, plus each extra-only form."""
    tiny = os.fspath(setup["root"] / "tiny")
    cache = ["--cache", os.fspath(out / "cache")]
    runs = [
        (["classify", setup["image"], "--top", "1"], None),
        (["info"], None),
        (["fetch", "--url", setup["url"], "--md5", setup["md5"], "--output", os.fspath(out / "m.onnx")], None),
        (["export", os.fspath(out / "e.onnx")], None),
        (["bench", "--precision", "fp32", "--duration", "0.2", "--warmup", "0"], None),
        (["eval", "--dataset", tiny, *cache], None),
        (["mlperf", "--dataset", tiny, "--mode", "accuracy", "--output", os.fspath(out / "mlperf"), *cache], "mlperf"),
        (["batch", tiny, "-o", os.fspath(out / "b.csv")], None),
        (["batch", tiny, "-o", os.fspath(out / "b.jsonl")], None),
        (["batch", tiny, "-o", os.fspath(out / "b.parquet")], "parquet"),
        (["info", "--backend", "openvino"], "openvino"),
        (["info", "--device", "cuda"], "cuda"),
    ]
    if hidden in ("ray", PLAIN):  # a real Ray start is tested in test_batch.py
        runs.append((["batch", tiny, "-o", os.fspath(out / "r.csv"), "--engine", "ray"], "ray"))
    if hidden in ("openvino", PLAIN):
        runs.append((["info", "--precision", "bf16"], "openvino"))
    runs.append((["serve", "--port", str(_free_port())], "serve"))  # last: it runs until stopped
    assert {argv[0] for argv, _ in runs} == set(COMMANDS)
    return runs


def _missing(needed: str | None, hidden: str) -> bool:
    if needed is None:
        return False
    hidden_modules = {m for modules in EXTRAS.values() for m in modules} if hidden == PLAIN else set(EXTRAS[hidden])
    return bool(set(EXTRAS[needed]) & hidden_modules)


@pytest.mark.slow
@pytest.mark.parametrize("hidden", [PLAIN, *EXTRAS])
def test_every_command_with_an_extra_hidden(hidden, setup, tmp_path):
    pytest.importorskip("fastapi", reason="the server's own run needs the serve extra installed")
    modules = sorted({m for ms in EXTRAS.values() for m in ms}) if hidden == PLAIN else EXTRAS[hidden]
    runs = _invocations(setup, tmp_path, hidden)
    runner = Path(__file__).with_name("extras_runner.py")
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
        if _missing(needed, hidden):
            extra = needed if needed != "parquet" or hidden != "ray" else "parquet"
            assert result["code"] == 2, (argv, err)
            assert err.count("\n") == 1 and f"pip install 'resnet50[{extra}]'" in err, (argv, err)
            assert err.startswith(f"resnet50 {argv[0]}: error: "), (argv, err)
        elif needed == "cuda":  # torch is here; a GPU may not be
            assert result["code"] == 0 or "no CUDA device available" in err, (argv, err)
        elif needed == "openvino" and result["code"] == 2:  # a CPU without bf16 says so
            assert "bf16" in err, (argv, err)
        else:
            assert result["code"] == 0, (argv, err)
    assert not (tmp_path / "b.parquet").exists() or not _missing("parquet", hidden)
    assert not any(p.name.startswith(".b.parquet") or p.name == "r.csv" for p in tmp_path.iterdir())
    assert (tmp_path / "b.csv").read_text().count("\n") == 4 and (tmp_path / "b.jsonl").read_text().count("\n") == 3
