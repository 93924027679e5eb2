"""torchvision ResNet50 checkpoints → our ONNX graph, converted once and cached by the file's hash.

A torchvision state dict (``resnet50-0676ba61.pth``, ``resnet50-11ad3fa6.pth``, MLPerf's
``resnet50-19c8e357.pth`` or a user's fine-tune with any class count) names its layers as our
graph does (``conv1``, ``layer1.0.conv2``, ``layer1.0.downsample``, ``fc``) and, like our graph,
puts each downsampling stride on the 3x3 convolution (v1.5). Batch norm is folded into the
convolutions (in float64, then rounded once), so the ONNX model computes what
``torchvision.models.resnet50`` computes in eval mode. torch is needed for reading the file only
(``pip install 'resnet50[torch]'``); the converted model runs everywhere the MLPerf file runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from resnet50.core.cache import cache_dir, file_sha256
from resnet50.core.errors import BackendUnavailableError, ModelFileError, first_line
from resnet50.derived.files import save_atomic
from resnet50.graph.spec import FEATURES, build_model, conv_specs

CONVERSION_VERSION = 1
BN_EPS = 1e-5  # torchvision's BatchNorm2d default, used by every ResNet50 checkpoint it ships


def _bn_names(conv: str) -> str:
    """The batch norm that follows a convolution, by torchvision's naming."""
    if conv == "conv1":
        return "bn1"
    if conv.endswith(".downsample"):
        return conv + ".1"
    return conv.rsplit(".", 1)[0] + ".bn" + conv[-1]


def _conv_weight_name(conv: str) -> str:
    return conv + (".0.weight" if conv.endswith(".downsample") else ".weight")


def expected_keys(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of a torchvision ResNet50 state dict with ``num_classes`` outputs, and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in conv_specs():
        shapes[_conv_weight_name(spec.name)] = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        bn = _bn_names(spec.name)
        for part in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{part}"] = (spec.out_channels,)
    shapes["fc.weight"] = (num_classes, FEATURES)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint as float arrays, read with ``torch.load(weights_only=True)``.

    Accepts a plain state dict, one under ``"state_dict"`` or ``"model"`` (training scripts
    save those), and ``module.``-prefixed names (DataParallel)."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(
            f"{path}: reading a PyTorch checkpoint needs torch: pip install 'resnet50[torch]'"
        ) from None
    try:
        loaded = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors, EOF, weights_only refusals
        raise ModelFileError(
            f"{path}: not a readable PyTorch checkpoint (truncated or not torch.save?): {first_line(exc)}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not loaded:
        raise ModelFileError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    out = {}
    for name, value in loaded.items():
        if isinstance(value, torch.Tensor):
            out[name.removeprefix("module.")] = value.detach().to(torch.float64).numpy()
    return out


def check_resnet50(path: str | os.PathLike, state: dict[str, np.ndarray]) -> int:
    """The class count of a ResNet50 state dict, or :class:`ModelFileError` naming what is not ResNet50."""
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2 or fc.shape[1] != FEATURES:
        got = "no fc.weight" if fc is None else f"fc.weight of shape {list(fc.shape)}"
        raise ModelFileError(f"{path}: not a ResNet50 state dict ({got}; ResNet50 has fc.weight [classes, {FEATURES}])")
    expected = expected_keys(fc.shape[0])
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFileError(f"{path}: not a ResNet50 state dict: no {missing[0]}{more} (another architecture?)")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ModelFileError(
                f"{path}: not a ResNet50 v1.5 state dict: {name} has shape {list(state[name].shape)}, "
                f"ResNet50 has {list(shape)}"
            )
    return fc.shape[0]


def folded_weights(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our graph's weights: each convolution with its batch norm folded in (eval mode)."""
    weights: dict[str, np.ndarray] = {}
    for spec in conv_specs():
        bn = _bn_names(spec.name)
        gain = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPS)
        weights[f"{spec.name}.weight"] = (state[_conv_weight_name(spec.name)] * gain[:, None, None, None]).astype(
            np.float32
        )
        weights[f"{spec.name}.bias"] = (state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * gain).astype(np.float32)
    weights["fc.weight"] = state["fc.weight"].astype(np.float32)
    weights["fc.bias"] = state["fc.bias"].astype(np.float32)
    return weights


def converted_path(sha256: str) -> Path:
    return cache_dir() / "converted" / f"torchvision-{sha256[:16]}-v{CONVERSION_VERSION}.onnx"


def convert_checkpoint(path: str | os.PathLike, sha256: str | None = None, *, progress: bool = False) -> Path:
    """The ONNX model of a torchvision ResNet50 checkpoint, converted on first use and cached by hash.

    Nothing is cached unless the whole file reads and is a ResNet50."""
    sha256 = sha256 or file_sha256(path)
    out = converted_path(sha256)
    if out.is_file():
        return out
    if progress:
        print(f"resnet50: converting {path} to ONNX (once; cached by its sha256)", file=sys.stderr, flush=True)
    state = read_state_dict(path)
    check_resnet50(path, state)
    metadata = {"resnet50.source": Path(path).name, "resnet50.source_sha256": sha256}
    return save_atomic(build_model(folded_weights(state), metadata=metadata), out)
