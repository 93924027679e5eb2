"""One LoadGen test: settings from ``user.conf`` plus overrides, the SUT, logs and ``results.json``."""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from resnet50.apps.imagenet import ImagenetDataset
from resnet50.apps.mlperf.accuracy import score
from resnet50.apps.mlperf.sut import ResNet50SUT, SampleLibrary
from resnet50.core.errors import BackendUnavailableError, InputNotFoundError, InvalidInputError, ResNet50Error

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
MODES = ("performance", "accuracy")
MODEL_NAME = "resnet50"  # the model name LoadGen's mlperf.conf and user.conf key on
LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json")
SYNTHETIC_WARNING = (
    "synthetic weights: labels are meaningless, so this is agreement with the labels given, not ImageNet accuracy"
)


@dataclass
class RunOptions:
    """What to run; ``None`` keeps the value of ``user.conf`` (and LoadGen's mlperf.conf)."""

    scenario: str = "Offline"
    mode: str = "performance"
    output: Path = Path("mlperf-results")
    user_conf: Path | None = None
    target_qps: float | None = None
    target_latency_ms: float | None = None
    min_duration_ms: int | None = None
    min_query_count: int | None = None
    batch_size: int = 8
    batch_timeout_ms: float = 0.0
    audit_config: Path | None = None  # an MLPerf compliance test's audit.config (TEST01, TEST04)

    def check(self) -> None:
        if self.scenario not in SCENARIOS:
            raise InvalidInputError(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if self.mode not in MODES:
            raise InvalidInputError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.target_qps is not None:
            if self.scenario not in ("Offline", "Server"):
                raise InvalidInputError(f"--target-qps applies to Offline and Server, not {self.scenario}")
            if self.target_qps <= 0:
                raise InvalidInputError(f"--target-qps must be positive, got {self.target_qps}")
        for name in ("target_latency_ms", "min_duration_ms", "min_query_count", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "min_duration_ms" else 1):
                raise InvalidInputError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.batch_timeout_ms < 0:
            raise InvalidInputError(f"--batch-timeout must not be negative, got {self.batch_timeout_ms}")
        if self.user_conf is not None and not Path(self.user_conf).is_file():
            raise InputNotFoundError(f"{self.user_conf}: no such user.conf file")
        if self.audit_config is not None and not Path(self.audit_config).is_file():
            raise InputNotFoundError(f"{self.audit_config}: no such audit.config file")

    def audit_file(self) -> Path | None:
        """The audit.config LoadGen will apply: the one given, else ``./audit.config`` when it
        exists (LoadGen's own rule, which compliance scripts rely on), else none."""
        if self.audit_config is not None:
            return Path(self.audit_config).resolve()
        found = Path("audit.config")
        return found.resolve() if found.is_file() else None


def default_user_conf() -> Path:
    """The ``user.conf`` shipped with the package."""
    return Path(os.fspath(resources.files(__package__) / "user.conf"))


def loadgen():
    """The ``mlperf_loadgen`` module, or a clear error saying how to install it."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise BackendUnavailableError(
            "MLPerf LoadGen is not installed: pip install 'resnet50[mlperf]' (mlcommons-loadgen)"
        ) from None
    return mlperf_loadgen


def build_settings(lg, options: RunOptions):
    """LoadGen's ``TestSettings``: mlperf.conf, then ``user.conf``, then the explicit overrides."""
    settings = lg.TestSettings()
    conf = Path(options.user_conf) if options.user_conf else default_user_conf()
    if not conf.is_file():
        raise InputNotFoundError(f"{conf}: this install lacks the shipped user.conf; give one with --user-conf FILE")
    if settings.FromConfig(os.fspath(conf), MODEL_NAME, options.scenario) != 0:
        raise InvalidInputError(f"{conf}: LoadGen could not read it as a user.conf")
    settings.scenario = getattr(lg.TestScenario, options.scenario)
    settings.mode = lg.TestMode.AccuracyOnly if options.mode == "accuracy" else lg.TestMode.PerformanceOnly
    if options.target_qps is not None:
        if options.scenario == "Offline":
            settings.offline_expected_qps = options.target_qps
        else:
            settings.server_target_qps = options.target_qps
    if options.target_latency_ms is not None:
        ns = int(options.target_latency_ms * 1e6)
        if options.scenario == "Server":
            settings.server_target_latency_ns = ns
        elif options.scenario == "SingleStream":
            settings.single_stream_expected_latency_ns = ns
        elif options.scenario == "MultiStream":
            settings.multi_stream_expected_latency_ns = ns
    if options.min_duration_ms is not None:
        settings.min_duration_ms = options.min_duration_ms
    if options.min_query_count is not None:
        settings.min_query_count = options.min_query_count
    return settings, conf


_LINE = re.compile(r"^\s*([^:=]+?)\s*:\s*(.+?)\s*$")


def parse_summary(text: str) -> dict[str, str]:
    """``key : value`` lines of ``mlperf_log_summary.txt`` (first occurrence of each key)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and not line.startswith(" *"):
            fields.setdefault(match.group(1), match.group(2))
    return fields


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_PERCENTILE = re.compile(r"^(\d+\.\d+) percentile latency \(ns\)$")
_HEADLINE = re.compile(r"^(\d+\.\d+)th percentile latency \(ns\)$")


def metrics(scenario: str, summary: dict[str, str]) -> dict:
    """The scenario's headline metric and latency percentiles (ms) from the summary."""
    out: dict = {}
    for key, value in summary.items():
        headline = _HEADLINE.match(key)
        if headline and _number(value) is not None:
            # SingleStream p90 / MultiStream p99 (or the percentile user.conf asked for)
            out["percentile"] = float(headline.group(1))
            out["percentile_latency_ms"] = _number(value) / 1e6
    latencies = {m.group(1): _number(v) / 1e6 for k, v in summary.items() if (m := _PERCENTILE.match(k)) and _number(v)}
    if latencies:
        out["latency_ms"] = latencies
    mean = _number(summary.get("Mean latency (ns)"))
    if mean is not None:
        out["mean_latency_ms"] = mean / 1e6
    if scenario == "Offline":
        out["samples_per_second"] = _number(summary.get("Samples per second"))
    elif scenario == "Server":
        out["completed_samples_per_second"] = _number(summary.get("Completed samples per second"))
        out["scheduled_samples_per_second"] = _number(summary.get("Scheduled samples per second"))
    return out


def advice(scenario: str, summary: dict[str, str], text: str) -> list[str]:
    """Why a run is INVALID and what to change: LoadGen's recommendations, plus the Offline fix."""
    lines = []
    if "Recommendations:" in text:
        section = text.split("Recommendations:", 1)[1].split("=====", 1)[0]
        # bullets (" * ...", wrapped onto indented lines) under "Recommendations" and "Early Stopping Result"
        bullets = "\n".join(line for line in section.splitlines() if not line.rstrip().endswith(":"))
        lines = [" ".join(item.split()) for item in bullets.split(" * ") if item.strip()]
    rate, target = _number(summary.get("Samples per second")), _number(summary.get("target_qps"))
    if scenario == "Offline" and rate and target and rate > target:
        lines.append(
            f"Offline ran at {rate:.1f} samples/s, above target_qps {target:g}, so it ended before min_duration: "
            f"rerun with --target-qps {math.ceil(rate * 1.2)}"
        )
    return lines


def run(model, dataset: ImagenetDataset, options: RunOptions) -> dict:
    """Run one LoadGen test of ``model`` on ``dataset``; write its logs and ``results.json``."""
    options.check()
    lg = loadgen()
    settings, conf = build_settings(lg, options)
    dataset = dataset.for_preprocessing(model.preprocessing)
    dataset.prepare()
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    for name in (*LOG_FILES, "results.json"):
        (output / name).unlink(missing_ok=True)  # never report a previous run's files as this one's

    audit = options.audit_file()
    audit_settings = read_audit(audit) if audit else {}
    # A compliance test may set the mode itself (TEST01: performance with sampled accuracy logs).
    mode = {"1": "accuracy", "2": "performance"}.get(audit_settings.get("mode", ""), options.mode)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = os.fspath(output)
    log_settings.log_output.copy_summary_to_stdout = False
    library = SampleLibrary(dataset, model.input_dtype)
    streams = getattr(getattr(model, "backend", None), "streams", 1)
    sut = ResNet50SUT(
        model, library, scenario=options.scenario, batch_size=options.batch_size,
        batch_timeout_ms=options.batch_timeout_ms, workers=streams,  # a worker per stream keeps them all busy
    )  # fmt: skip
    start = time.perf_counter()
    with sut:
        sut_handle, qsl_handle = sut.construct(), library.construct()
        try:
            # An absent file name makes LoadGen run without an audit; never a stray ./audit.config
            # other than the one audit_file() reports.
            lg.StartTestWithLogSettings(
                sut_handle, qsl_handle, settings, log_settings, os.fspath(audit) if audit else _NO_AUDIT
            )
        finally:
            lg.DestroyQSL(qsl_handle)
            lg.DestroySUT(sut_handle)
    seconds = time.perf_counter() - start
    if sut.error is not None:
        raise ResNet50Error(f"inference failed during the LoadGen run: {sut.error}")

    summary_path = output / "mlperf_log_summary.txt"
    if not summary_path.is_file():
        raise ResNet50Error(f"LoadGen wrote no {summary_path}; see {output / 'mlperf_log_detail.txt'}")
    summary = parse_summary(summary_path.read_text())
    results = {
        "scenario": options.scenario,
        "mode": mode,
        "weights": model.weights,
        "precision": model.precision,
        "use_native": model.use_native,
        "model": os.fspath(model.source.path),
        "loadgen_version": _loadgen_version(),
        "user_conf": os.fspath(conf),
        "dataset": dataset.describe(),
        "batch_size": options.batch_size,
        "streams": streams,
        "audit_config": audit_summary(audit, audit_settings, output),
        "wall_seconds": round(seconds, 3),
        "output": os.fspath(output),
        "files": [*(name for name in LOG_FILES if (output / name).is_file()), "results.json"],
    }
    if mode == "performance":
        results["result"] = summary.get("Result is", "UNKNOWN")
        results["metrics"] = metrics(options.scenario, summary)
        results["summary"] = summary
        if results["result"] != "VALID":
            results["advice"] = advice(options.scenario, summary, summary_path.read_text())
    else:
        accuracy = score(output / "mlperf_log_accuracy.json", dataset.val_map)
        results["accuracy"] = {**accuracy.to_dict(), "line": accuracy.line()}
    if model.source.weights.synthetic:
        results["warning"] = SYNTHETIC_WARNING
    (output / "results.json.tmp").write_text(json.dumps(results, indent=2) + "\n")
    (output / "results.json.tmp").replace(output / "results.json")
    return results


_NO_AUDIT = "resnet50-no-audit.config"  # a name that never exists: LoadGen then applies no audit


def read_audit(audit: Path) -> dict[str, str]:
    """``model.scenario.key = value`` lines of an audit.config, by key (the last part)."""
    settings = {}
    for line in audit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            settings[key.strip().rsplit(".", 1)[-1]] = value.strip()
    return settings


def audit_summary(audit: Path | None, settings: dict[str, str], output: Path) -> dict | None:
    """What a compliance run applied, for results.json: the file, its settings, and how many
    responses LoadGen logged for accuracy checking (TEST01 samples them in performance mode)."""
    if audit is None:
        return None
    log = output / "mlperf_log_accuracy.json"
    logged = len(json.loads(log.read_text() or "[]")) if log.is_file() else 0
    return {"path": os.fspath(audit), "settings": settings, "accuracy_log_entries": logged}


def _loadgen_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlcommons-loadgen")
    except PackageNotFoundError:
        return None
