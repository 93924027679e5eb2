"""The ONNX ResNet50 v1.5 (ours or an MLPerf release) as a ``torch.nn.Module``.

The weights are read once from the ONNX graph and cached as a ``.pt`` file keyed by the
ONNX file's md5. Layers are found by graph structure, not by initializer names (the MLPerf
files name them after TensorFlow scopes and may keep batch norm unfolded): from the input,
the walker follows stem → max pool → 16 bottlenecks (reduce, spatial and expand convs, the
projection shortcut, the residual add) → pooling → classifier, folds batch norm and
separate bias adds into each convolution, reads padding from ``pads``/``auto_pad``/``Pad``
nodes, and checks every shape and stride against :func:`resnet50.graph.spec.conv_specs`.
Anything it does not recognise is refused with the node that stopped it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet50.core.cache import cache_dir, file_md5
from resnet50.core.constants import INPUT_NAME
from resnet50.core.errors import ModelFileError
from resnet50.derived.files import load_onnx
from resnet50.graph.rewrite import consumers_of, node_attributes
from resnet50.graph.spec import FEATURES, STAGES, ConvSpec, conv_specs, weight_shapes

CONVERTER_VERSION = 1

Pads = tuple[int, int, int, int]  # top, left, bottom, right


@dataclass
class Converted:
    """Folded weights by :func:`resnet50.graph.spec.weight_shapes` name, plus the padding of each layer."""

    weights: dict[str, np.ndarray]
    conv_pads: dict[str, Pads]
    pool_pads: Pads
    notes: list[str] = field(default_factory=list)


class _Graph:
    """Index of an ONNX graph: constants, producers and consumers of every tensor."""

    def __init__(self, model, source: str):
        from onnx import numpy_helper

        self.source = source
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.consumers = consumers_of(model.graph)
        for node in model.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
            elif node.input and node.input[0] in self.consts:
                self._fold(node)

    def _fold(self, node) -> None:
        """Precompute Identity/Transpose/Reshape of constants (a converter may leave kernels HWIO)."""
        value = self.consts[node.input[0]]
        if node.op_type == "Identity":
            self.consts[node.output[0]] = value
        elif node.op_type == "Transpose":
            perm = self.attrs(node).get("perm")
            self.consts[node.output[0]] = np.transpose(value, perm) if perm is not None else value.T
        elif node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in self.consts:
            self.consts[node.output[0]] = value.reshape([int(d) for d in self.consts[node.input[1]]])

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.source}: cannot convert to torch: {problem}")

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def users(self, tensor: str) -> list:
        return [n for n in self.consumers.get(tensor, []) if n.op_type != "Constant"]

    @staticmethod
    def attrs(node) -> dict[str, Any]:
        return node_attributes(node)

    def only_user(self, tensor: str, what: str):
        users = self.users(tensor)
        if len(users) != 1:
            ops = ", ".join(f"{n.op_type} {n.name!r}" for n in users) or "nothing"
            raise self.fail(f"expected {what} after tensor {tensor!r}, found {ops}")
        return users[0]

    def pad_amounts(self, node) -> Pads:
        """(top, left, bottom, right) of a constant-mode ``Pad`` on an NCHW tensor."""
        attrs = self.attrs(node)
        if attrs.get("mode", b"constant") not in (b"constant", "constant"):
            raise self.fail(f"Pad {node.name!r} uses mode {attrs['mode']!r}, not constant")
        pads = attrs.get("pads") if self.opset < 11 else self.const(node.input[1])
        if pads is None:
            raise self.fail(f"Pad {node.name!r} has non-constant pads")
        pads = [int(p) for p in np.asarray(pads).ravel()]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
            raise self.fail(f"Pad {node.name!r} pads {pads} are not spatial NCHW pads")
        return pads[2], pads[3], pads[6], pads[7]

    def spatial_pads(self, node, size: int, kernel: int, stride: int, extra: Pads) -> Pads:
        """Effective (top, left, bottom, right) of a Conv/MaxPool on a ``size``x``size`` input."""
        attrs = self.attrs(node)
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // stride)
            total = max((out - 1) * stride + kernel - size, 0)
            small, big = total // 2, total - total // 2
            begin, end = (small, big) if auto == "SAME_UPPER" else (big, small)
            own = (begin, begin, end, end)
        elif auto == "VALID":
            own = (0, 0, 0, 0)
        else:
            p = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
            own = (p[0], p[1], p[2], p[3])
        return tuple(a + b for a, b in zip(own, extra))  # type: ignore[return-value]


def _out_size(size: int, kernel: int, stride: int, pads: Pads) -> int:
    return (size + pads[0] + pads[2] - kernel) // stride + 1


class _Walker:
    """Follows the ResNet50 v1.5 structure through an ONNX graph, collecting folded weights."""

    def __init__(self, graph: _Graph):
        self.g = graph
        self.size = 224
        self.out = Converted({}, {}, (0, 0, 0, 0))

    # -- convolutions -------------------------------------------------------------------
    def convs_from(self, tensor: str, extra: Pads = (0, 0, 0, 0)) -> list[tuple[Any, Pads]]:
        """Conv nodes reading ``tensor`` directly or through Pad/Identity, with the Pad amounts."""
        found = []
        for node in self.g.users(tensor):
            if node.op_type == "Conv":
                found.append((node, extra))
            elif node.op_type == "Pad":
                more = self.g.pad_amounts(node)
                found += self.convs_from(node.output[0], tuple(a + b for a, b in zip(extra, more)))
            elif node.op_type == "Identity":
                found += self.convs_from(node.output[0], extra)
        return found

    def take_conv(self, spec: ConvSpec, node, extra: Pads, size: int) -> tuple[str, int]:
        """Fold ``node`` and what follows it (BN, bias, scale, ReLU) into ``spec``; return its output."""
        g = self.g
        weight = g.const(node.input[1])
        if weight is None:
            raise g.fail(f"Conv {node.name!r} ({spec.name}) has a non-constant weight")
        expected = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        if tuple(weight.shape) != expected:
            raise g.fail(f"Conv {node.name!r} ({spec.name}) has weight {list(weight.shape)}, expected {list(expected)}")
        attrs = g.attrs(node)
        if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise g.fail(f"Conv {node.name!r} ({spec.name}) is grouped or dilated")
        strides = list(attrs.get("strides", [1, 1]))
        if strides != [spec.stride, spec.stride]:
            raise g.fail(f"Conv {node.name!r} ({spec.name}) has strides {strides}, expected {spec.stride}")
        bias = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        w = weight.astype(np.float64)
        b = np.zeros(spec.out_channels) if bias is None else bias.astype(np.float64).reshape(-1)
        tensor, relu = node.output[0], False
        while True:
            users = g.users(tensor)
            if len(users) != 1 or relu:
                break
            nxt = users[0]
            if nxt.op_type == "BatchNormalization":
                scale, shift, mean, var = (g.const(n) for n in nxt.input[1:5])
                if any(v is None for v in (scale, shift, mean, var)):
                    raise g.fail(f"BatchNormalization {nxt.name!r} has non-constant parameters")
                eps = float(g.attrs(nxt).get("epsilon", 1e-5))
                factor = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
                w = w * factor[:, None, None, None]
                b = (b - mean) * factor + shift
            elif nxt.op_type in ("Add", "Mul") and (const := self.channel_const(nxt, tensor, spec)) is not None:
                if nxt.op_type == "Add":
                    b = b + const
                else:
                    w, b = w * const[:, None, None, None], b * const
            elif nxt.op_type == "Relu":
                relu = True
            elif nxt.op_type == "Identity":
                pass
            else:
                break
            tensor = nxt.output[0]
        if relu != spec.relu:
            raise g.fail(f"Conv {node.name!r} ({spec.name}) is {'' if relu else 'not '}followed by ReLU")
        pads = g.spatial_pads(node, size, spec.kernel, spec.stride, extra)
        self.out.weights[f"{spec.name}.weight"] = w.astype(np.float32)
        self.out.weights[f"{spec.name}.bias"] = b.astype(np.float32)
        self.out.conv_pads[spec.name] = pads
        return tensor, _out_size(size, spec.kernel, spec.stride, pads)

    def channel_const(self, node, tensor: str, spec: ConvSpec) -> np.ndarray | None:
        """The per-channel constant of an elementwise Add/Mul on ``tensor``, if it is one."""
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        value = self.g.const(other)
        if value is None or value.size not in (1, spec.out_channels):
            return None
        if (value.ndim == 4 and value.shape[2:] != (1, 1)) or value.ndim > 4:
            return None
        return np.broadcast_to(value.astype(np.float64).reshape(-1), (spec.out_channels,)).copy()

    def pick(self, candidates: list[tuple[Any, Pads]], spec: ConvSpec, where: str) -> tuple[Any, Pads]:
        for node, extra in candidates:
            weight = self.g.const(node.input[1])
            if weight is not None and weight.shape[0] == spec.out_channels and weight.shape[1] == spec.in_channels:
                return node, extra
        raise self.g.fail(
            f"no {spec.kernel}x{spec.kernel} convolution to {spec.out_channels} channels ({spec.name}) {where}"
        )

    # -- network ------------------------------------------------------------------------
    def run(self) -> Converted:
        g = self.g
        specs = iter(conv_specs())
        stem = next(specs)
        node, extra = self.pick(self.convs_from(INPUT_NAME), stem, f"reads {INPUT_NAME!r}")
        x, self.size = self.take_conv(stem, node, extra, self.size)
        x = self.max_pool(x)
        for stage, (blocks, _, _) in enumerate(STAGES, start=1):
            for block in range(blocks):
                x = self.bottleneck(x, specs, f"layer{stage}.{block}", projection=block == 0)
        self.head(x)
        missing = set(weight_shapes()) - set(self.out.weights)
        if missing:
            raise g.fail(f"layers not found: {', '.join(sorted(missing)[:4])}")
        return self.out

    def max_pool(self, x: str) -> str:
        g = self.g
        extra: Pads = (0, 0, 0, 0)
        node = g.only_user(x, "MaxPool")
        if node.op_type == "Pad":
            extra = g.pad_amounts(node)
            node = g.only_user(node.output[0], "MaxPool")
        attrs = g.attrs(node)
        if node.op_type != "MaxPool" or list(attrs.get("kernel_shape", [])) != [3, 3]:
            raise g.fail(f"expected a 3x3 MaxPool after the stem, found {node.op_type} {node.name!r}")
        if list(attrs.get("strides", [1, 1])) != [2, 2] or attrs.get("ceil_mode", 0):
            raise g.fail(f"MaxPool {node.name!r} is not stride 2 with floor rounding")
        self.out.pool_pads = g.spatial_pads(node, self.size, 3, 2, extra)
        self.size = _out_size(self.size, 3, 2, self.out.pool_pads)
        return node.output[0]

    def bottleneck(self, x: str, specs, prefix: str, projection: bool) -> str:
        g = self.g
        reduce, spatial, expand = next(specs), next(specs), next(specs)
        readers = self.convs_from(x)
        size = self.size
        node, extra = self.pick(readers, reduce, f"at the input of {prefix}")
        a, _ = self.take_conv(reduce, node, extra, size)
        node, extra = self.pick(self.convs_from(a), spatial, f"after {reduce.name}")
        a, self.size = self.take_conv(spatial, node, extra, size)
        node, extra = self.pick(self.convs_from(a), expand, f"after {spatial.name}")
        branch, _ = self.take_conv(expand, node, extra, self.size)
        shortcut = x
        if projection:
            proj = next(specs)
            node, extra = self.pick(readers, proj, f"at the input of {prefix}")
            shortcut, _ = self.take_conv(proj, node, extra, size)
        add = g.only_user(branch, f"the residual Add of {prefix}")
        if add.op_type != "Add" or set(add.input) != {branch, shortcut}:
            raise g.fail(f"expected the residual Add of {prefix} at {add.op_type} {add.name!r}")
        relu = g.only_user(add.output[0], f"the ReLU of {prefix}")
        if relu.op_type != "Relu":
            raise g.fail(f"expected the ReLU of {prefix}, found {relu.op_type} {relu.name!r}")
        return relu.output[0]

    def head(self, x: str) -> None:
        g = self.g
        node = g.only_user(x, "global average pooling")
        if node.op_type == "ReduceMean":
            axes = g.attrs(node).get("axes")
            if axes is None and len(node.input) > 1:
                axes = g.const(node.input[1])
            if sorted(int(a) % 4 for a in np.asarray(axes).ravel()) != [2, 3]:
                raise g.fail(f"ReduceMean {node.name!r} does not average over height and width")
        elif node.op_type != "GlobalAveragePool":
            raise g.fail(f"expected global average pooling, found {node.op_type} {node.name!r}")
        t = node.output[0]
        node = g.only_user(t, "the classifier")
        while node.op_type in ("Flatten", "Reshape", "Squeeze", "Identity"):
            t = node.output[0]
            node = g.only_user(t, "the classifier")
        if node.op_type == "Gemm":
            attrs = g.attrs(node)
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                raise g.fail(f"Gemm {node.name!r} has alpha/beta/transA other than 1/1/0")
            w = g.const(node.input[1])
            w = None if w is None else (w if attrs.get("transB", 0) else w.T)
            bias = (
                g.const(node.input[2]) if len(node.input) > 2 else np.zeros(len(w) if w is not None else 1, np.float32)
            )
            logits = node.output[0]
        elif node.op_type == "MatMul":
            w = g.const(node.input[1])
            w = None if w is None else w.T
            logits = node.output[0]
            add = g.only_user(logits, "the classifier bias")
            bias = g.const(add.input[1] if add.input[0] == logits else add.input[0]) if add.op_type == "Add" else None
            if bias is None:
                raise g.fail(f"expected the classifier bias Add after MatMul {node.name!r}")
            logits = add.output[0]
        else:
            raise g.fail(f"expected the classifier (Gemm or MatMul), found {node.op_type} {node.name!r}")
        if w is None or w.ndim != 2 or w.shape[1] != FEATURES or bias is None or bias.size != w.shape[0]:
            raise g.fail(f"classifier {node.name!r} is not {FEATURES} -> classes")
        while (after := g.users(logits)) and len(after) == 1 and after[0].op_type == "Identity":
            logits = after[0].output[0]  # TensorFlow's "final_dense" Identity
        if not any(n.op_type == "Softmax" for n in g.users(logits)):
            raise g.fail(f"no Softmax after the classifier {node.name!r}")
        self.out.weights["fc.weight"] = np.ascontiguousarray(w, np.float32)
        self.out.weights["fc.bias"] = np.asarray(bias, np.float32).reshape(-1)


def convert(model, source: str = "<model>") -> Converted:
    """Read the folded weights and paddings of an ONNX ResNet50 v1.5 ``ModelProto``."""
    walker = _Walker(_Graph(model, source))
    return walker.run()


# -- the torch module ------------------------------------------------------------------------


def build_module(converted: Converted):
    """A ``ResNet50Torch`` (float32, CPU) holding ``converted``'s weights."""
    import torch

    module = _module_class()(converted.conv_pads, converted.pool_pads, len(converted.weights["fc.weight"]))
    state = {name: torch.tensor(value) for name, value in converted.weights.items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


_CLASS = None


def _module_class():
    """The module class, defined on first use so ``import resnet50.runtime.torch.convert`` needs no torch."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Conv(nn.Conv2d):
        """Folded conv(+BN) with bias; asymmetric padding becomes an explicit zero pad."""

        def __init__(self, spec: ConvSpec, pads: Pads):
            symmetric = pads[0] == pads[1] == pads[2] == pads[3]
            super().__init__(
                spec.in_channels, spec.out_channels, spec.kernel, spec.stride, pads[0] if symmetric else 0, bias=True
            )
            self.pre_pad = None if symmetric else (pads[1], pads[3], pads[0], pads[2])
            self.relu = spec.relu

        def forward(self, x):
            if self.pre_pad is not None:
                x = F.pad(x, self.pre_pad)
            x = super().forward(x)
            return F.relu(x, inplace=True) if self.relu else x

    class Bottleneck(nn.Module):
        def __init__(self, convs: list[ConvSpec], pads: dict[str, Pads]):
            super().__init__()
            self.conv1, self.conv2, self.conv3 = (Conv(s, pads[s.name]) for s in convs[:3])
            self.downsample = Conv(convs[3], pads[convs[3].name]) if len(convs) > 3 else None

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            return F.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut, inplace=True)

    class ResNet50Torch(nn.Module):
        """ResNet50 v1.5 with batch norm folded: float input (RGB minus means) → 1001 logits."""

        def __init__(self, conv_pads: dict[str, Pads], pool_pads: Pads, num_classes: int):
            super().__init__()
            specs = conv_specs()
            self.conv1 = Conv(specs[0], conv_pads["conv1"])
            self.pool_pads = tuple(pool_pads)
            i = 1
            for stage, (blocks, _, _) in enumerate(STAGES, start=1):
                layer = []
                for block in range(blocks):
                    n = 4 if block == 0 else 3
                    layer.append(Bottleneck(specs[i : i + n], conv_pads))
                    i += n
                setattr(self, f"layer{stage}", nn.Sequential(*layer))
            self.fc = nn.Linear(FEATURES, num_classes)

        def forward(self, x):
            x = self.conv1(x)
            t, left, b, r = self.pool_pads
            if t == left == b == r:
                x = F.max_pool2d(x, 3, 2, t)
            else:
                x = F.max_pool2d(F.pad(x, (left, r, t, b), value=float("-inf")), 3, 2)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(x.mean((2, 3)), 1))

    _CLASS = ResNet50Torch
    return _CLASS


# -- the cache -------------------------------------------------------------------------------


def cache_path(md5: str) -> Path:
    return cache_dir() / "torch" / f"{md5[:16]}-v{CONVERTER_VERSION}.pt"


def _read_cache(path: Path, md5: str) -> Converted | None:
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("md5") != md5 or saved.get("version") != CONVERTER_VERSION:
            return None
        shapes = weight_shapes()
        weights = {k: v.numpy() for k, v in saved["state_dict"].items()}
        if {k: tuple(v.shape) for k, v in weights.items()} != shapes:
            return None
        pads = {k: tuple(int(p) for p in v) for k, v in saved["conv_pads"].items()}
        return Converted(weights, pads, tuple(int(p) for p in saved["pool_pads"]))  # type: ignore[arg-type]
    except Exception:  # a corrupt or foreign cache file is rebuilt, never trusted
        return None


def _write_cache(path: Path, md5: str, converted: Converted) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {
        "md5": md5,
        "version": CONVERTER_VERSION,
        "state_dict": {k: torch.tensor(v) for k, v in converted.weights.items()},
        "conv_pads": {k: list(v) for k, v in converted.conv_pads.items()},
        "pool_pads": list(converted.pool_pads),
    }
    torch.save(payload, tmp)
    tmp.replace(path)


def load_converted(model_path: str | os.PathLike) -> tuple[Converted, bool]:
    """The converted weights of an ONNX file, from the cache when present; (weights, from_cache)."""
    md5 = file_md5(model_path)
    path = cache_path(md5)
    if path.is_file() and (cached := _read_cache(path, md5)) is not None:
        return cached, True
    converted = convert(load_onnx(model_path), os.fspath(model_path))
    with contextlib.suppress(OSError):  # a read-only cache only costs a conversion next time
        _write_cache(path, md5, converted)
    return converted, False


def load_module(model_path: str | os.PathLike):
    """``ResNet50Torch`` (float32, CPU, eval mode) with the weights of the ONNX file at ``model_path``."""
    converted, _ = load_converted(model_path)
    return build_module(converted)
