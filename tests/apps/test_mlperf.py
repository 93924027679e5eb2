"""The MLPerf LoadGen harness: every scenario VALID on short runs, accuracy 100% against the
fp32 model's own labels, the accuracy log in the reference format, and clear dataset errors."""

from __future__ import annotations

import json
import re
import shutil
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeModel

pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is not installed")

from resnet50.apps.imagenet import DatasetError, ImagenetDataset, read_val_map, write_val_map
from resnet50.apps.mlperf.accuracy import score
from resnet50.apps.mlperf.run import RunOptions, parse_summary, run
from resnet50.apps.mlperf.sut import labels_from_outputs
from resnet50.cli import main
from resnet50.core.errors import InputNotFoundError, InvalidInputError, ResNet50Error

pytestmark = pytest.mark.slow  # LoadGen runs of the real harness

COUNT = 12
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")

# Short runs: the percentile and samples/query are lowered so LoadGen's early-stopping rule is
# met by ~12 queries; Offline's target_qps stays far above what 2 cores reach (58 img/s fp32 on a
# 2-core Zen 5), so the generated query outlasts min_duration and the run stays VALID.
SHORT_CONF = """
*.Offline.target_qps = 150
*.Server.target_qps = 4
*.Server.target_latency = 5000
*.Server.target_latency_percentile = 50
*.SingleStream.target_latency = 5
*.SingleStream.target_latency_percentile = 50
*.MultiStream.target_latency = 10
*.MultiStream.target_latency_percentile = 50
*.MultiStream.samples_per_query = 2
"""


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory, model_fp32) -> Path:
    """ImageNet layout whose labels are the fp32 model's own top-1 (via classify, not the harness)."""
    from resnet50.core.samples import write_jpegs

    root = tmp_path_factory.mktemp("imagenet")
    paths = write_jpegs(root, COUNT, seed=100)
    results = model_fp32.classify([str(p) for p in paths], top_k=1)
    write_val_map(root / "val_map.txt", [(p.name, r.class_id - 1) for p, r in zip(paths, results)])
    return root


@pytest.fixture(scope="module")
def short_conf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("conf") / "user.conf"
    path.write_text(SHORT_CONF)
    return path


@pytest.fixture(scope="module")
def dataset(imagenet, tmp_path_factory) -> ImagenetDataset:
    return ImagenetDataset.from_val_map(imagenet, cache_dir=tmp_path_factory.mktemp("cache"))


def _options(tmp_path, short_conf, scenario, mode="performance", **kw) -> RunOptions:
    return RunOptions(
        scenario=scenario, mode=mode, output=tmp_path / "out", user_conf=short_conf,
        min_duration_ms=1000, min_query_count=12, **kw,
    )  # fmt: skip


def reference_accuracy(accuracy_log: Path, val_map: Path) -> str:
    """MLPerf's accuracy-imagenet.py (float32 responses), restated: the line it prints."""
    imagenet = [(c[0], int(c[1])) for c in (line.strip().split() for line in val_map.read_text().splitlines())]
    results = json.loads(accuracy_log.read_text())
    seen, good = set(), 0
    for j in results:
        idx = j["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        found = int(np.frombuffer(bytes.fromhex(j["data"]), np.float32)[0])
        good += imagenet[idx][1] == found
    return f"accuracy={100.0 * good / len(seen):.3f}%, good={good}, total={len(seen)}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_performance_run_is_valid(scenario, model_fp32, dataset, short_conf, tmp_path):
    results = run(model_fp32, dataset, _options(tmp_path, short_conf, scenario))
    out = tmp_path / "out"
    summary = (out / "mlperf_log_summary.txt").read_text()
    assert "Result is : VALID" in summary
    assert f"Scenario : {scenario}" in summary
    assert results["result"] == "VALID" and results["audit_config"] is None
    assert results["weights"] == "synthetic" and "not ImageNet accuracy" in results["warning"]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "results.json"):
        assert (out / name).is_file() and name in results["files"]
    metrics = results["metrics"]
    if scenario == "Offline":
        assert metrics["samples_per_second"] == float(parse_summary(summary)["Samples per second"])
    elif scenario == "Server":
        assert metrics["completed_samples_per_second"] > 0
    else:
        assert metrics["percentile"] == 50.0
        assert metrics["percentile_latency_ms"] == int(parse_summary(summary)["50.0th percentile latency (ns)"]) / 1e6


def test_offline_below_real_throughput_is_invalid_with_advice(model_fp32, dataset, short_conf, tmp_path):
    options = _options(tmp_path, short_conf, "Offline", target_qps=0.5)
    options.min_query_count = 1
    results = run(model_fp32, dataset, options)
    assert results["result"] == "INVALID"
    assert "Result is : INVALID" in (tmp_path / "out" / "mlperf_log_summary.txt").read_text()
    assert re.fullmatch(
        r"Offline ran at [\d.]+ samples/s, above target_qps 0.5, so it ended before min_duration: "
        r"rerun with --target-qps \d+",
        results["advice"][-1],
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_accuracy_mode_scores_100_for_fp32(scenario, model_fp32, dataset, short_conf, tmp_path):
    results = run(model_fp32, dataset, _options(tmp_path, short_conf, scenario, mode="accuracy"))
    log = tmp_path / "out" / "mlperf_log_accuracy.json"
    entries = json.loads(log.read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(COUNT))  # every sample once, none dropped
    assert all(len(bytes.fromhex(e["data"])) == 4 for e in entries)  # one float32 per response
    assert results["accuracy"]["top1_percent"] == 100.0
    assert results["accuracy"]["line"] == reference_accuracy(log, dataset.val_map)
    assert results["accuracy"]["line"] == f"accuracy=100.000%, good={COUNT}, total={COUNT}"


@pytest.fixture(scope="module")
def offline_accuracy_log(model_fp32, dataset, short_conf, tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("offline-accuracy")
    run(model_fp32, dataset, _options(tmp_path, short_conf, "Offline", mode="accuracy"))
    return tmp_path / "out" / "mlperf_log_accuracy.json"


def test_accuracy_log_holds_reference_labels(model_fp32, dataset, offline_accuracy_log):
    """Each response is float32(ArgMax - 1), the 0..999 label the reference harness writes."""
    entries = json.loads(offline_accuracy_log.read_text())
    found = {e["qsl_idx"]: np.frombuffer(bytes.fromhex(e["data"]), np.float32)[0] for e in entries}
    argmax = model_fp32.run(dataset.tensor(range(COUNT), np.float32))["ArgMax:0"]
    assert [found[i] for i in range(COUNT)] == [np.float32(a - 1) for a in argmax]


TEST01_AUDIT = """# MLPerf compliance TEST01 (accuracy verification), as in inference/compliance/TEST01
*.*.mode = 2
*.*.accuracy_log_rng_seed = 720381539243781796
*.*.accuracy_log_sampling_target = 24
"""


def test_test01_logs_sampled_responses_equal_to_the_accuracy_run(
    model_fp32, dataset, short_conf, offline_accuracy_log, tmp_path
):
    audit = tmp_path / "audit.config"
    audit.write_text(TEST01_AUDIT)
    # --mode accuracy on purpose: the audit's mode 2 (performance) decides, as in LoadGen
    results = run(model_fp32, dataset, _options(tmp_path, short_conf, "Offline", mode="accuracy", audit_config=audit))
    assert results["mode"] == "performance" and results["result"] == "VALID"
    assert results["audit_config"]["path"] == str(audit.resolve())
    assert results["audit_config"]["settings"]["accuracy_log_sampling_target"] == "24"
    sampled = json.loads((tmp_path / "out" / "mlperf_log_accuracy.json").read_text())
    assert results["audit_config"]["accuracy_log_entries"] == len(sampled) > 0
    # TEST01's check: a response logged during the performance run equals the accuracy run's
    reference = {e["qsl_idx"]: e["data"] for e in json.loads(offline_accuracy_log.read_text())}
    assert all(entry["data"] == reference[entry["qsl_idx"]] for entry in sampled)


def test_audit_config_in_the_working_directory_is_reported(model_fp32, dataset, short_conf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = _options(tmp_path, short_conf, "Offline")
    assert options.audit_file() is None
    (tmp_path / "audit.config").write_text(TEST01_AUDIT)
    assert options.audit_file() == (tmp_path / "audit.config").resolve()  # LoadGen's own rule
    results = run(model_fp32, dataset, options)
    assert results["audit_config"]["path"] == str((tmp_path / "audit.config").resolve())
    assert results["audit_config"]["accuracy_log_entries"] > 0


def test_scoring_counts_wrong_labels(dataset, offline_accuracy_log, tmp_path):
    entries = read_val_map(dataset.val_map)
    wrong = [(name, (label + 1) % 1000 if i in (0, 5) else label) for i, (name, label) in enumerate(entries)]
    val_map = write_val_map(tmp_path / "wrong.txt", wrong)
    result = score(offline_accuracy_log, val_map)
    assert (result.good, result.total, result.duplicates) == (COUNT - 2, COUNT, 0)
    assert result.line() == reference_accuracy(offline_accuracy_log, val_map)


def test_scoring_ignores_duplicates_like_the_reference(dataset, offline_accuracy_log, tmp_path):
    entries = json.loads(offline_accuracy_log.read_text())
    wrong_first = {**entries[0], "data": np.float32(-1).tobytes().hex()}
    log = tmp_path / "dupes.json"
    log.write_text(json.dumps([*entries, wrong_first]))  # a later duplicate does not count
    result = score(log, dataset.val_map)
    assert (result.good, result.total, result.duplicates) == (COUNT, COUNT, 1)
    log.write_text(json.dumps([wrong_first, *entries]))  # the first answer for an index counts
    assert score(log, dataset.val_map).line() == reference_accuracy(log, dataset.val_map)
    assert score(log, dataset.val_map).good == COUNT - 1


def test_shipped_user_conf_is_applied():
    import mlperf_loadgen as lg

    from resnet50.apps.mlperf.run import build_settings, default_user_conf

    assert default_user_conf().is_file()
    settings, conf = build_settings(lg, RunOptions(scenario="Offline"))
    assert conf == default_user_conf() and settings.offline_expected_qps == 30
    settings, _ = build_settings(lg, RunOptions(scenario="Server", target_qps=7.5, target_latency_ms=50))
    assert (settings.server_target_qps, settings.server_target_latency_ns) == (7.5, 50_000_000)


def test_unreadable_user_conf_is_refused(tmp_path):
    import mlperf_loadgen as lg

    from resnet50.apps.mlperf.run import build_settings

    bad = tmp_path / "user.conf"
    bad.write_text("*.Offline.target_qps = fast\n")
    with pytest.raises(InvalidInputError, match=r"user\.conf: LoadGen could not read it as a user\.conf$"):
        build_settings(lg, RunOptions(user_conf=bad))


def test_native_model_gives_the_same_accuracy_log(model_fp32, model_native, dataset, short_conf, tmp_path):
    tensor = dataset.tensor(range(COUNT), np.float32)
    crops = dataset.crops(range(COUNT))
    assert np.array_equal(labels_from_outputs(model_fp32.run(tensor)), labels_from_outputs(model_native.run(crops)))
    results = run(model_native, dataset, _options(tmp_path, short_conf, "SingleStream", mode="accuracy"))
    assert results["accuracy"]["top1_percent"] == 100.0 and results["use_native"] is True


def test_inference_failure_is_reported_not_hung(dataset, short_conf, tmp_path, model_fp32):
    class Broken(FakeModel):
        source = model_fp32.source

        def run(self, tensor, top_k=5):
            raise RuntimeError("device lost")

    with pytest.raises(ResNet50Error, match="inference failed during the LoadGen run: device lost"):
        run(Broken(), dataset, _options(tmp_path, short_conf, "Offline", mode="accuracy"))


def test_offline_runs_a_batch_on_every_stream_at_once(model_fp32, dataset, short_conf, tmp_path):
    """With two model streams, two workers take batches of the one Offline query: the first two
    batches meet inside the model (with one worker, the first would wait out the barrier)."""
    meeting, lock, calls = threading.Barrier(2, timeout=30), threading.Lock(), []

    class TwoStreams(FakeModel):
        source = model_fp32.source
        backend = types.SimpleNamespace(streams=2)

        def run(self, tensor, top_k=5):
            with lock:
                calls.append(len(tensor))
                first_two = len(calls) <= 2
            if first_two:
                meeting.wait()
            return model_fp32.run(tensor, top_k)

    results = run(TwoStreams(), dataset, _options(tmp_path, short_conf, "Offline", mode="accuracy"))
    assert results["streams"] == 2 and sum(calls) == COUNT and len(calls) >= 2
    assert results["accuracy"]["line"] == f"accuracy=100.000%, good={COUNT}, total={COUNT}"


def test_options_are_checked(short_conf, tmp_path):
    with pytest.raises(InvalidInputError, match="--target-qps applies to Offline and Server, not SingleStream"):
        RunOptions(scenario="SingleStream", target_qps=10).check()
    with pytest.raises(InvalidInputError, match="scenario 'Offfline' is not one of"):
        RunOptions(scenario="Offfline").check()
    with pytest.raises(InputNotFoundError, match=r"nope\.conf: no such user\.conf file"):
        RunOptions(user_conf=tmp_path / "nope.conf").check()
    with pytest.raises(InputNotFoundError, match=r"audit\.config: no such audit\.config file"):
        RunOptions(audit_config=tmp_path / "audit.config").check()


# --- data set ------------------------------------------------------------------------------


def test_cache_holds_the_exact_crop_and_is_reused(imagenet, tmp_path):
    from resnet50.processing.preprocess import preprocess_one

    ds = ImagenetDataset.from_val_map(imagenet, count=3, cache_dir=tmp_path / "cache")
    assert ds.prepare() == 3
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    assert ds.prepare() == 0  # a rerun decodes nothing
    for i in range(3):
        assert np.array_equal(ds.crop(i), preprocess_one(ds.paths[i])[0])


def test_changed_image_is_decoded_again(imagenet, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(imagenet, root)
    ds = ImagenetDataset.from_val_map(root, count=2, cache_dir=tmp_path / "cache")
    ds.prepare()
    shutil.copyfile(root / "img_00005.jpg", root / "img_00000.jpg")
    assert ds.prepare() == 1
    assert np.array_equal(ds.crop(0), ImagenetDataset.from_val_map(imagenet, count=6, cache_dir=tmp_path).crop(5))


def test_missing_files_are_all_listed(imagenet, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(imagenet, root)
    (root / "img_00002.jpg").unlink()
    (root / "img_00007.jpg").unlink()
    ds = ImagenetDataset.from_val_map(root, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError) as info:
        ds.prepare()
    assert str(info.value) == (
        "2 of 12 data set files are missing: img_00002.jpg (no such file); img_00007.jpg (no such file)"
    )


def test_corrupt_files_are_all_listed_and_nothing_dropped(imagenet, tmp_path):
    root = tmp_path / "corrupt"
    shutil.copytree(imagenet, root)
    data = (root / "img_00003.jpg").read_bytes()
    (root / "img_00003.jpg").write_bytes(data[: len(data) // 2])
    (root / "img_00009.jpg").write_bytes(b"not an image at all")
    ds = ImagenetDataset.from_val_map(root, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError) as info:
        ds.prepare()
    message = str(info.value)
    assert message.startswith("2 of 12 data set files could not be read: img_00003.jpg (truncated JPEG")
    assert "; img_00009.jpg (not a decodable image" in message
    assert [p.split(" ")[0] for p in info.value.problems] == ["img_00003.jpg", "img_00009.jpg"]


def test_malformed_val_map_names_the_lines(tmp_path):
    (tmp_path / "val_map.txt").write_text("a.jpg 3\nb.jpg\nc.jpg 1000\n\nd.jpg 7\n")
    with pytest.raises(DatasetError, match=r"lines not of the form .*: line 2: 'b.jpg'; line 3: 'c.jpg 1000'$"):
        ImagenetDataset.from_val_map(tmp_path)


def test_count_selects_the_first_entries(imagenet, tmp_path):
    ds = ImagenetDataset.from_val_map(imagenet, count=5, cache_dir=tmp_path)
    assert [p.name for p in ds.paths] == [f"img_{i:05d}.jpg" for i in range(5)]
    with pytest.raises(InvalidInputError, match="--count 13 is more than the 12 images in"):
        ImagenetDataset.from_val_map(imagenet, count=13)
    with pytest.raises(InputNotFoundError, match=r"val_map\.txt: no such file"):
        ImagenetDataset.from_val_map(tmp_path)


# --- command line ----------------------------------------------------------------------------


def test_cli_accuracy_run_writes_every_log(imagenet, short_conf, tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["mlperf", "--dataset", str(imagenet), "--scenario", "Offline", "--mode", "accuracy", "--count", "6"]
    argv += ["--output", str(out), "--user-conf", str(short_conf), "--cache", str(tmp_path / "c"), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir() if p.name != "mlperf_log_trace.json") == [
        "mlperf_log_accuracy.json", "mlperf_log_detail.txt", "mlperf_log_summary.txt", "results.json",
    ]  # fmt: skip
    assert printed == json.loads((out / "results.json").read_text())
    assert printed["weights"] == "synthetic" and printed["accuracy"]["line"] == "accuracy=100.000%, good=6, total=6"
    assert printed["streams"] == 1


def test_cli_streams_run_the_model_and_the_harness_in_two(imagenet, short_conf, tmp_path, capsys):
    argv = ["mlperf", "--dataset", str(imagenet), "--scenario", "Offline", "--mode", "accuracy", "--streams", "2"]
    argv += ["--threads", "2", "--output", str(tmp_path / "o"), "--user-conf", str(short_conf)]
    argv += ["--cache", str(tmp_path / "c"), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["streams"] == 2 and printed["accuracy"]["line"] == f"accuracy=100.000%, good={COUNT}, total={COUNT}"


def test_cli_human_output_carries_the_synthetic_warning(imagenet, short_conf, tmp_path, capsys):
    argv = ["mlperf", "--dataset", str(imagenet), "--mode", "accuracy", "--count", "4", "--scenario", "SingleStream"]
    assert main([*argv, "--output", str(tmp_path / "o"), "--user-conf", str(short_conf)]) == 0
    out = capsys.readouterr().out
    assert "top-1 100.000% (4/4) vs val_map.txt" in out
    assert "WARNING: synthetic weights" in out and "not ImageNet accuracy" in out
    assert "ImageNet accuracy" not in out.replace("not ImageNet accuracy", "")


def test_cli_lists_corrupt_files(imagenet, tmp_path, capsys):
    root = tmp_path / "corrupt"
    shutil.copytree(imagenet, root)
    (root / "img_00004.jpg").write_bytes(b"")
    assert (
        main(["mlperf", "--dataset", str(root), "--cache", str(tmp_path / "c"), "--output", str(tmp_path / "o")]) == 2
    )
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "resnet50 mlperf: error: 1 of 12 data set files could not be read: img_00004.jpg (empty input, not an image)"
    )
    assert not (tmp_path / "o").exists()  # nothing ran, so no logs that could be mistaken for results


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "/nonexistent/imagenet"],
         "resnet50 mlperf: error: /nonexistent/imagenet: no such data set folder"),
        (["--dataset", ".", "--scenario", "SingleStream", "--target-qps", "5"],
         "resnet50 mlperf: error: --target-qps applies to Offline and Server, not SingleStream"),
        (["--dataset", ".", "--scenario", "MultiStream", "--streams", "2"],
         "resnet50 mlperf: error: --streams applies to Offline and Server; MultiStream has one query in flight"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line_exit_2(extra, message, capsys):
    assert main(["mlperf", *extra]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
