"""The options table: validation, the auto backend, and the CLI's choices and help drawn from it."""

from __future__ import annotations

import pytest

from resnet50 import BackendUnavailableError, InvalidInputError
from resnet50.cli import build_parser
from resnet50.core import options
from resnet50.core.options import OPTIONS, choose


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``Option.installed`` see ``modules`` as absent."""
    real = options.importlib.util.find_spec
    monkeypatch.setattr(options.importlib.util, "find_spec", lambda name: None if name in modules else real(name))


def test_every_row_is_unique_and_the_lists_follow_the_table():
    keys = [(o.device, o.backend, o.precision) for o in OPTIONS]
    assert len(keys) == len(set(keys))
    assert options.DEVICES == ("cpu", "cuda") and options.BACKENDS == ("onnxruntime", "openvino", "torch")
    assert options.PRECISIONS == ("fp32", "int8", "bf16", "fp16")


def test_auto_takes_the_fastest_installed_backend(monkeypatch):
    assert choose("cpu", "auto", "fp32").backend == "onnxruntime"  # 25 vs 24 img/s
    if options.importlib.util.find_spec("openvino"):
        assert choose("cpu", "auto", "int8").backend == "openvino"  # 99.7 vs 90
        assert choose("cpu", None, "bf16").backend == "openvino"
    _hide(monkeypatch, "openvino")
    assert choose("cpu", "auto", "int8").backend == "onnxruntime"
    with pytest.raises(
        BackendUnavailableError,
        match=r"^precision 'bf16' on 'cpu' needs a backend: pip install 'resnet50\[openvino\]'$",
    ):
        choose("cpu", "auto", "bf16")
    assert choose("cuda", "auto", "fp16").backend == "torch"


def test_spin_wait_steers_auto_to_a_backend_that_has_it():
    assert choose("cpu", "auto", "int8", spin_wait=True).backend == "onnxruntime"
    with pytest.raises(InvalidInputError, match=r"^spin_wait applies to the onnxruntime backend on the CPU only$"):
        choose("cpu", "auto", "bf16", spin_wait=True)
    with pytest.raises(InvalidInputError, match=r"^spin_wait applies to the onnxruntime backend on the CPU only$"):
        choose("cpu", "openvino", "int8", spin_wait=True)


def test_unsupported_combinations_list_what_is_supported():
    with pytest.raises(
        InvalidInputError,
        match=r"^precision 'fp16' does not run on device 'cpu'; "
        r"supported: cpu onnxruntime: fp32/int8; cpu openvino: fp32/bf16/int8$",
    ):
        choose("cpu", "auto", "fp16")
    with pytest.raises(InvalidInputError, match=r"^backend 'torch' does not run precision 'fp32' on device 'cpu'"):
        choose("cpu", "torch", "fp32")
    with pytest.raises(
        InvalidInputError,
        match=r"^backend 'openvino' does not run precision 'int8' on device 'cuda'; "
        r"supported: cuda torch: fp32/fp16/bf16$",
    ):
        choose("cuda", "openvino", "int8")
    with pytest.raises(InvalidInputError, match=r"^device 'tpu' is not one of cpu, cuda$"):
        choose("tpu")
    with pytest.raises(
        InvalidInputError, match=r"^backend 'tensorrt' is not one of auto, onnxruntime, openvino, torch$"
    ):
        choose(backend="tensorrt")


def test_cli_choices_and_help_come_from_the_table(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["classify", "--help"])
    text = capsys.readouterr().out
    assert "--backend {auto,onnxruntime,openvino,torch}" in text
    assert "--precision {fp32,int8,bf16,fp16}" in text and "--device {cpu,cuda}" in text
    for o in OPTIONS:
        assert f"{o.device:<6} {o.backend:<12} {o.precision:<9}" in text
    args = parser.parse_args(["classify", "x.jpg"])
    assert (args.backend, args.precision, args.device) == ("auto", "fp32", "cpu")
