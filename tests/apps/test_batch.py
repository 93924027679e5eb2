"""``resnet50 batch``: inputs, rows, writers, resume, CLI, and local/Ray parity under faults."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from hostile import special_files, within
from resnet50.apps.batch import COLUMNS, classify_dataset, list_inputs, run_batch
from resnet50.apps.batch.writers import RowWriter, parts_dir
from resnet50.cli import main
from resnet50.core.errors import InputNotFoundError, InvalidInputError

GOOD = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """A folder of generated JPEGs plus a corrupt and a truncated one, and a list naming a missing file."""
    from resnet50.core.samples import write_jpegs

    root = tmp_path_factory.mktemp("batch")
    images = root / "images"
    good = write_jpegs(images, GOOD, seed=100)
    (images / "corrupt.jpg").write_bytes(b"this is not an image")
    (images / "truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    (images / "notes.md").write_text("not an image suffix: never listed")
    listed = [f"images/{p.name}" for p in good[:4]] + ["images/missing.jpg", "# a comment", ""]
    (root / "list.txt").write_text("\n".join(listed) + "\n")
    return {"root": root, "images": images, "good": [str(p) for p in good]}


@pytest.fixture(scope="module")
def local_rows(dataset, model_fp32) -> list[dict]:
    return classify_dataset(dataset["images"], model=model_fp32).to_pylist()


def _by_path(rows: list[dict]) -> dict[str, dict]:
    assert len({r["path"] for r in rows}) == len(rows), "a path has more than one row"
    return {r["path"]: r for r in rows}


# --- inputs -------------------------------------------------------------------------------


def test_folder_lists_images_sorted_and_absolute(dataset):
    paths = list_inputs(dataset["images"])
    names = [Path(p).name for p in paths]
    assert names == sorted(["corrupt.jpg", "truncated.jpg"] + [Path(p).name for p in dataset["good"]])
    assert all(os.path.isabs(p) for p in paths)


def test_file_list_is_relative_to_its_folder_and_skips_comments(dataset, monkeypatch):
    monkeypatch.chdir("/")
    paths = list_inputs(dataset["root"] / "list.txt")
    assert paths == [*dataset["good"][:4], str(dataset["images"] / "missing.jpg")]


def test_tables_read_the_path_column(dataset, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2], "file": dataset["good"][:2]}), tmp_path / "t.parquet")
    assert list_inputs(tmp_path / "t.parquet", path_column="file") == dataset["good"][:2]
    with pytest.raises(InvalidInputError, match=r"t\.parquet: no column 'path' \(columns: id, file\)"):
        list_inputs(tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("path,split\n" + "".join(f"{p},val\n" for p in dataset["good"][:3]))
    assert list_inputs(tmp_path / "t.csv") == dataset["good"][:3]


def test_bad_sources_are_refused_by_name(tmp_path):
    with pytest.raises(InputNotFoundError, match="nowhere: no such file or folder"):
        list_inputs(tmp_path / "nowhere")
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match=r"data\.bin: not a folder, file list"):
        list_inputs(tmp_path / "data.bin")


# --- rows ---------------------------------------------------------------------------------


def test_rows_match_the_model_and_bad_images_get_error_rows(dataset, local_rows, model_fp32):
    rows = _by_path(local_rows)
    assert len(rows) == GOOD + 2
    assert set(local_rows[0]) == set(COLUMNS)
    for path in dataset["good"]:
        row, expected = rows[path], model_fp32.classify(path, top_k=5)
        assert row["error"] == "" and row["weights"] == "synthetic"
        assert (row["class_id"], row["label"]) == (expected.class_id, expected.label)
        assert row["top_k_ids"] == [p.class_id for p in expected.predictions]
        np.testing.assert_allclose(row["top_k_scores"], [p.score for p in expected.predictions], rtol=1e-5)
        assert row["score"] == row["top_k_scores"][0]
    corrupt = rows[str(dataset["images"] / "corrupt.jpg")]
    assert corrupt["error"].endswith("corrupt.jpg: not a decodable image (JPEG, PNG, BMP, WebP, TIFF ...)")
    assert (corrupt["class_id"], corrupt["label"], corrupt["score"], corrupt["top_k_ids"]) == (None, None, None, [])
    truncated = rows[str(dataset["images"] / "truncated.jpg")]
    assert "truncated.jpg: truncated JPEG" in truncated["error"]


def test_missing_file_in_a_list_becomes_an_error_row(dataset, model_fp32):
    rows = classify_dataset(dataset["root"] / "list.txt", model=model_fp32, top_k=2).to_pylist()
    assert [r["path"] for r in rows] == list_inputs(dataset["root"] / "list.txt")
    assert rows[-1]["error"] == f"{dataset['images'] / 'missing.jpg'}: no such file"
    assert all(len(r["top_k_ids"]) == 2 for r in rows[:-1])


# --- writers and resume -------------------------------------------------------------------


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            blank = row["error"] != ""
            out.append(
                {
                    **row,
                    "class_id": None if blank else int(row["class_id"]),
                    "label": None if blank else row["label"],
                    "score": None if blank else float(row["score"]),
                    "top_k_ids": json.loads(row["top_k_ids"]),
                    "top_k_scores": json.loads(row["top_k_scores"]),
                }
            )
    return out


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_every_format_holds_the_same_rows(dataset, local_rows, model_fp32, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    summary = run_batch(dataset["images"], out, model=model_fp32)
    assert (summary.inputs, summary.classified, summary.errors, summary.skipped) == (GOOD + 2, GOOD, 2, 0)
    assert _read(out) == local_rows
    assert not parts_dir(out).exists()


def test_existing_output_is_refused_and_kept(dataset, model_fp32, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("precious\n")
    with pytest.raises(InvalidInputError, match=r"r\.csv: it exists; use --resume to continue it or --overwrite"):
        run_batch(dataset["images"], out, model=model_fp32)
    assert out.read_text() == "precious\n"
    with pytest.raises(InvalidInputError, match=r"r\.txt: unknown output format"):
        run_batch(dataset["images"], tmp_path / "r.txt", model=model_fp32)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_resume_skips_paths_already_done(dataset, local_rows, model_fp32, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    first = run_batch(dataset["root"] / "list.txt", out, model=model_fp32)  # 4 images + 1 missing
    assert (first.classified, first.errors) == (4, 1)
    second = run_batch(dataset["images"], out, model=model_fp32, resume=True)
    assert (second.inputs, second.skipped, second.classified, second.errors) == (GOOD + 2, 4, GOOD - 4, 2)
    rows = _by_path(_read(out))
    assert len(rows) == GOOD + 2 + 1  # the missing file's row from the list stays
    assert {p: r for p, r in rows.items() if "missing" not in p} == _by_path(local_rows)
    third = run_batch(dataset["images"], out, model=model_fp32, resume=True)
    assert (third.skipped, third.rows) == (GOOD + 2, 0)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_retry_errors_classifies_fixed_files_again(dataset, local_rows, model_fp32, tmp_path, suffix):
    import shutil

    late = tmp_path / "late.jpg"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*dataset["good"][:3], str(late)]) + "\n")
    out = tmp_path / f"results{suffix}"
    first = run_batch(listing, out, model=model_fp32)
    assert (first.classified, first.errors) == (3, 1)
    shutil.copy(dataset["good"][3], late)  # the missing file arrives
    kept = run_batch(listing, out, model=model_fp32, resume=True)  # plain resume keeps the error row
    assert (kept.skipped, kept.rows) == (4, 0) and _by_path(_read(out))[str(late)]["error"]
    again = run_batch(listing, out, model=model_fp32, resume=True, retry_errors=True)
    assert (again.skipped, again.classified, again.errors) == (3, 1, 0)
    rows = _by_path(_read(out))
    assert sorted(rows) == sorted([*dataset["good"][:3], str(late)])  # one row per path, no error left
    expected = {k: v for k, v in _by_path(local_rows)[dataset["good"][3]].items() if k != "path"}
    assert {k: v for k, v in rows[str(late)].items() if k != "path"} == expected
    with pytest.raises(InvalidInputError, match=r"retry_errors \(--retry-errors\) needs resume \(--resume\)"):
        run_batch(listing, out, model=model_fp32, retry_errors=True)


def test_resume_picks_up_the_parts_of_a_killed_parquet_run(dataset, local_rows, model_fp32, tmp_path):
    from resnet50.apps.batch.rows import to_table

    out = tmp_path / "results.parquet"
    killed = RowWriter(out, flush_rows=1)
    killed.write(to_table(local_rows[:3]))
    killed.write(to_table(local_rows[3:5]))  # no close(): as if the process died here
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.parquet"))) == 2
    with pytest.raises(InvalidInputError, match="an interrupted run's parts of it exist; use --resume"):
        run_batch(dataset["images"], out, model=model_fp32)
    summary = run_batch(dataset["images"], out, model=model_fp32, resume=True)
    assert (summary.skipped, summary.rows) == (5, GOOD + 2 - 5)
    assert _by_path(_read(out)) == _by_path(local_rows)
    assert not parts_dir(out).exists()


def test_resume_cuts_a_half_written_csv_line(dataset, local_rows, model_fp32, tmp_path):
    out = tmp_path / "results.csv"
    run_batch(dataset["root"] / "list.txt", out, model=model_fp32)
    with open(out, "a") as f:
        f.write(f"{dataset['good'][6]},12,some label,0.5")  # killed mid-line
    summary = run_batch(dataset["images"], out, model=model_fp32, resume=True)
    assert summary.skipped == 4
    rows = _by_path(_read(out))
    assert rows[dataset["good"][6]] == _by_path(local_rows)[dataset["good"][6]]


def test_progress_bar_shows_count_and_rate_only_when_asked(dataset, model_fp32, tmp_path, capsys):
    run_batch(dataset["images"], tmp_path / "quiet.csv", model=model_fp32)
    assert "img/s" not in capsys.readouterr().err
    run_batch(dataset["images"], tmp_path / "bar.csv", model=model_fp32, progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{GOOD + 2}/{GOOD + 2} [" in last and "img/s]" in last


# --- command line -------------------------------------------------------------------------


def test_cli_writes_rows_and_prints_a_json_summary(dataset, local_rows, tmp_path, capsys, monkeypatch):
    import sys

    for stream in (sys.stdout, sys.stderr):  # as on a terminal: only --json keeps the bar away
        monkeypatch.setattr(stream, "isatty", lambda: True)
    out = tmp_path / "cli.parquet"
    assert main(["batch", str(dataset["images"]), "-o", str(out), "--batch", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert "img/s" not in captured.err
    summary = json.loads(captured.out)
    assert {k: summary[k] for k in ("rows", "classified", "errors", "weights", "engine")} == {
        "rows": GOOD + 2,
        "classified": GOOD,
        "errors": 2,
        "weights": "synthetic",
        "engine": "local",
    }
    assert _read(out) == local_rows
    assert main(["batch", str(dataset["images"]), "-o", str(tmp_path / "cli.csv")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "img/s]" in captured.err
    summary_line = rf"cli\.csv: {GOOD + 2} rows \({GOOD} classified, 2 errors\) in [\d.]+ s, [\d.]+ images/s, synthetic"
    assert re.search(summary_line, captured.err)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resume", "--overwrite"], "--resume and --overwrite contradict each other; pick one"),
        (["--num-workers", "2"], "--address and --num-workers need --engine ray"),
        (["--engine", "ray", "--num-workers", "0"], "--num-workers must be at least 1, got 0"),
        (["--batch", "0"], "batch size must be at least 1, got 0"),
    ],
)
def test_cli_bad_options_give_one_line_and_exit_2(dataset, tmp_path, capsys, extra, message):
    assert main(["batch", str(dataset["images"]), "-o", str(tmp_path / "x.csv"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"resnet50 batch: error: {message}"
    assert not (tmp_path / "x.csv").exists()


# --- Ray ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="the ray engine needs ray[data] (pip install 'resnet50[ray]')")
    pytest.importorskip("ray.data", reason="the ray engine needs ray[data]")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_same_rows_as_local(ray_local, dataset, local_rows, model_fp32, tmp_path):
    from resnet50.apps.batch.ray_engine import iter_tables

    ds = classify_dataset(dataset["images"], engine="ray", model=model_fp32)
    ray_rows = [row for table in iter_tables(ds) for row in table.to_pylist()]
    assert ray_rows == local_rows  # same order, same values, bit for bit
    stats = ds.stats()  # decoding ran in its own tasks, not fused into the model actors
    assert "MapBatches(decode_batch)" in stats and "MapBatches(decode_batch)->" not in stats
    out = tmp_path / "ray.jsonl"
    summary = run_batch(dataset["images"], out, engine="ray", model=model_fp32, batch_size=3)
    assert (summary.engine, summary.classified, summary.errors) == ("ray", GOOD, 2)
    assert _read(out) == local_rows


def test_ray_actor_killed_mid_run_loses_and_duplicates_nothing(ray_local, dataset, local_rows, model_fp32, tmp_path):
    from resnet50.apps.batch.ray_engine import RayClassifier

    marker = str(tmp_path / "killed-once")

    class DyingClassifier(RayClassifier):
        """Kills its own process on its second batch, the first time only (marker file)."""

        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                    os._exit(1)
                except FileExistsError:
                    pass
            return super().__call__(batch)

    out = tmp_path / "ray.parquet"
    summary = run_batch(
        dataset["images"],
        out,
        engine="ray",
        model=model_fp32,
        batch_size=2,
        actor_class=DyingClassifier,
        max_restarts=2,
    )
    assert os.path.exists(marker), "the actor never died: the fault was not injected"
    assert (summary.classified, summary.errors) == (GOOD, 2)
    assert _read(out) == local_rows


def test_ray_worker_on_other_weights_fails_the_job_with_one_clear_error(ray_local, dataset):
    from resnet50.apps.batch.ray_engine import build_dataset, iter_tables
    from resnet50.core.errors import BackendUnavailableError

    ds = build_dataset(list_inputs(dataset["images"]), md5="0" * 32)  # the driver "runs" another file
    with pytest.raises(
        BackendUnavailableError, match=r"the Ray job failed: Ray worker on .* but the driver runs md5 0{32}"
    ):
        list(iter_tables(ds))


def test_cli_ray_engine_reuses_a_running_ray_and_leaves_it_up(ray_local, dataset, local_rows, tmp_path, capsys):
    out = tmp_path / "cli-ray.csv"
    argv = ["batch", str(dataset["images"]), "-o", str(out), "--engine", "ray", "--num-workers", "1", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["engine"], summary["rows"], summary["errors"]) == ("ray", GOOD + 2, 2)
    assert _read(out) == local_rows
    assert ray_local.is_initialized()  # it was started by the caller, so the caller shuts it down


def test_unreachable_ray_address_fails_fast_with_one_line():
    from resnet50.apps.ray_cluster import check_reachable
    from resnet50.core.errors import BackendUnavailableError

    with pytest.raises(
        BackendUnavailableError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1: Connection refused"
    ):
        check_reachable("127.0.0.1:1")
    check_reachable("auto")  # resolved by Ray itself, not checked here


# --- hostile inputs and damaged outputs --------------------------------------------------


@pytest.fixture
def hostile(tmp_path) -> dict:
    with special_files(tmp_path) as files:
        yield files


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
