"""benchmarks/: the shared helper module (results, machine facts, JSON, chart, flags, timing) and the scripts' CLIs."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402

HELPERS = (
    "common.py",
    "http_client.py",
    "load_ray.py",
    "protocol_clients.py",
)  # modules the scripts import, not scripts
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        (common.positive_int, "0", "argument --n: 0 is less than 1"),
        (common.positive_int, "-3", "argument --n: -3 is less than 1"),
        (common.positive_int, "2.5", "argument --n: '2.5' is not a whole number"),
        (common.positive_float, "0", "argument --n: 0 is not above 0"),
        (common.positive_float, "nan", "argument --n: nan is not above 0"),
        (common.positive_float, "abc", "argument --n: 'abc' is not a number"),
    ],
)
def test_numeric_flags_reject_bad_values_with_one_line(kind, value, message, capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--n", type=kind)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--n", value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"x: error: {message}"


def test_numeric_flags_accept_good_values():
    assert common.positive_int("3") == 3
    assert common.positive_float("0.25") == 0.25


def test_out_defaults_to_the_results_folder_and_settings_are_json():
    p = common.parser("Title.\n\nMore.")
    common.add_out(p, "demo")
    args = p.parse_args([])
    assert args.out == BENCHMARKS / "results" / "demo.json"
    assert common.settings(args) == {"out": str(BENCHMARKS / "results" / "demo.json")}
    assert p.parse_args(["--out", "/tmp/x.json"]).out == Path("/tmp/x.json")


def test_header_records_the_same_machine_facts_for_every_benchmark():
    import platform

    from resnet50.core.cpu import cpu_info

    head = common.header("demo")
    assert list(head) == ["benchmark", "machine"] and head["benchmark"] == "demo"
    machine = head["machine"]
    assert set(machine) == {"date", "cpu", "platform", "python", "versions"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", machine["date"])
    assert machine["cpu"] == cpu_info()
    assert machine["python"] == platform.python_version()
    assert machine["versions"]["numpy"] == np.__version__
    assert set(machine["versions"]) <= set(common.VERSIONED)


def test_save_writes_the_json_and_the_chart_beside_it(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    result = {"benchmark": "demo", "values": [1, 2.5], "nested": {"a": None}}

    def chart(data: dict, path: Path) -> None:
        with common.figure(path, 1, 2, figsize=(4, 2)) as (fig, (left, right)):
            fig.suptitle("demo")
            left.bar(["a", "b"], data["values"])
            right.plot(data["values"])

    out = tmp_path / "deep" / "demo.json"
    png = common.save(out, result, chart)
    assert png == tmp_path / "deep" / "demo.png"
    assert json.loads(out.read_text()) == result and out.read_text().endswith("}\n")
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert capsys.readouterr().err == f"wrote {out} and {png}\n"

    assert common.save(tmp_path / "plain.json", result) is None
    assert not (tmp_path / "plain.png").exists()


def test_a_chart_that_fails_writes_no_png_and_leaves_no_open_figure(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = len(plt.get_fignums())
    with pytest.raises(KeyError), common.figure(tmp_path / "bad.png") as (_, ax):
        ax.plot([1, 2])
        raise KeyError("missing")
    assert not (tmp_path / "bad.png").exists()
    assert len(plt.get_fignums()) == before


def test_run_for_times_every_call_after_the_warmup():
    calls = []

    def step() -> int:
        calls.append(1)
        return 2

    timed = common.run_for(step, duration=0.02, warmup=0.01)
    assert timed.items == 2 * len(timed.latencies_s)
    assert len(calls) > len(timed.latencies_s)  # warm-up calls are not counted
    assert timed.seconds >= 0.02 and timed.per_s == timed.items / timed.seconds

    once = common.run_for(lambda: 5, duration=0.0)
    assert once.items == 5 and len(once.latencies_s) == 1


def test_medians():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([1.0, 2.0], ndigits=1) == 1.5
    assert common.median_percentiles(
        [{"p50": 1.0, "p90": 4.0}, {"p50": 3.0, "p90": 2.0}, {"p50": 2.0, "p90": 9.0}]
    ) == {
        "p50": 2.0,
        "p90": 4.0,
    }
    assert common.median_percentiles([]) == {}
    assert common.per_item_ms(lambda _: None, [1, 2, 3], rounds=2) >= 0.0


def _env() -> dict[str, str]:
    src = str(BENCHMARKS.parent / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_says_what_it_measures_and_has_out_in_help(script):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "--out OUT" in proc.stdout
    doc = ast.get_docstring(ast.parse((BENCHMARKS / script).read_text()))
    assert " ".join(doc.split("\n\n")[0].split()) in " ".join(proc.stdout.split())  # what it measures


@pytest.mark.slow
def test_preprocess_bench_writes_its_result_where_out_says(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pre.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "preprocess_bench.py"), "--rounds", "1", "--images", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "preprocess_bench" and result["images"] == 2
    assert set(result["machine"]) == {"date", "cpu", "platform", "python", "versions"}
    assert set(result["ms_per_image"]) == {
        "reference",
        "ours_float",
        "ours_uint8",
        "full_resize_crop",
        "crop_only_resize",
    }
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    summary = json.loads(proc.stdout)
    assert "machine" not in summary and summary["images"] == 2
