"""The ResNet50 v1.5 graph as ONNX, with the MLPerf interface.

The base graph takes ``input_tensor:0`` (float32 ``[N,3,224,224]``, RGB minus the ImageNet
means) and gives ``softmax_tensor:0`` (float32 ``[N,1001]``) and ``ArgMax:0`` (int64 ``[N]``),
like the MLPerf release. Batch norm is folded into each convolution's weight and bias.

Rewrites of any model with that interface (ours or the MLPerf file) are in
:mod:`resnet50.graph.rewrite`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resnet50.core.constants import (
    ARGMAX_OUTPUT,
    INPUT_NAME,
    NUM_CLASSES,
    SOFTMAX_OUTPUT,
)

#: (blocks, bottleneck width, output channels) of the four stages.
STAGES: tuple[tuple[int, int, int], ...] = ((3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048))
FEATURES = 2048
OPSET = 11


@dataclass(frozen=True)
class ConvSpec:
    """One folded conv(+BN) layer: weight ``[out, in, k, k]`` and bias ``[out]``."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    relu: bool
    role: str  # "stem", "reduce", "spatial", "expand" or "shortcut"

    @property
    def padding(self) -> int:
        return self.kernel // 2


def conv_specs() -> list[ConvSpec]:
    """The 53 convolutions of ResNet50 v1.5 in execution order.

    v1.5 puts the stride of each downsampling block on the 3x3 convolution.
    """
    specs = [ConvSpec("conv1", 3, 64, 7, 2, True, "stem")]
    in_ch = 64
    for stage, (blocks, width, out_ch) in enumerate(STAGES, start=1):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 1 else 1
            prefix = f"layer{stage}.{block}"
            specs += [
                ConvSpec(f"{prefix}.conv1", in_ch, width, 1, 1, True, "reduce"),
                ConvSpec(f"{prefix}.conv2", width, width, 3, stride, True, "spatial"),
                ConvSpec(f"{prefix}.conv3", width, out_ch, 1, 1, False, "expand"),
            ]
            if block == 0:
                specs.append(ConvSpec(f"{prefix}.downsample", in_ch, out_ch, 1, stride, False, "shortcut"))
            in_ch = out_ch
    return specs


def weight_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """Name → shape of every parameter of the folded model with ``num_classes`` outputs."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in conv_specs():
        shapes[f"{spec.name}.weight"] = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        shapes[f"{spec.name}.bias"] = (spec.out_channels,)
    shapes["fc.weight"] = (num_classes, FEATURES)
    shapes["fc.bias"] = (num_classes,)
    return shapes


class _GraphWriter:
    """Collects nodes and initializers while the network is laid out."""

    def __init__(self):
        self.nodes: list = []

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, spec: ConvSpec, x: str) -> str:
        p = spec.padding
        y = self.node(
            "Conv",
            [x, f"{spec.name}.weight", f"{spec.name}.bias"],
            f"{spec.name}.out",
            kernel_shape=[spec.kernel, spec.kernel],
            strides=[spec.stride, spec.stride],
            pads=[p, p, p, p],
        )
        return self.node("Relu", [y], f"{spec.name}.relu") if spec.relu else y


def build_model(weights: dict[str, np.ndarray], *, opset: int = OPSET, metadata: dict[str, str] | None = None):
    """The ResNet50 v1.5 ``onnx.ModelProto`` with the MLPerf interface and these weights
    (as many classes as ``fc.weight`` has rows: 1001 for MLPerf's layout, 1000 for torchvision's)."""
    from onnx import TensorProto, helper, numpy_helper

    fc = weights.get("fc.weight")
    num_classes = fc.shape[0] if fc is not None and fc.ndim == 2 else NUM_CLASSES
    expected = weight_shapes(num_classes)
    if set(weights) != set(expected):
        raise ValueError(f"weights do not match ResNet50 v1.5: missing {sorted(set(expected) - set(weights))[:3]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weight {name} has shape {weights[name].shape}, expected {shape}")

    g = _GraphWriter()
    specs = iter(conv_specs())
    x = g.conv(next(specs), INPUT_NAME)
    x = g.node("MaxPool", [x], "pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for stage, (blocks, _, _) in enumerate(STAGES, start=1):
        for block in range(blocks):
            branch = x
            for _ in range(3):
                branch = g.conv(next(specs), branch)
            shortcut = g.conv(next(specs), x) if block == 0 else x
            x = g.node("Add", [branch, shortcut], f"layer{stage}.{block}.add")
            x = g.node("Relu", [x], f"layer{stage}.{block}.relu")
    x = g.node("GlobalAveragePool", [x], "avgpool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    x = g.node("Gemm", [x, "fc.weight", "fc.bias"], "logits", transB=1)
    g.node("Softmax", [x], SOFTMAX_OUTPUT, axis=1)
    g.node("ArgMax", [SOFTMAX_OUTPUT], ARGMAX_OUTPUT, axis=1, keepdims=0)

    graph = helper.make_graph(
        g.nodes,
        "resnet50_v1.5",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info(ARGMAX_OUTPUT, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(SOFTMAX_OUTPUT, TensorProto.FLOAT, ["N", num_classes]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="resnet50")
    # Added to the model itself, one at a time: make_graph and make_model each copy what they are given.
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
    model.ir_version = 6 if opset < 13 else 7
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def features_model(model, copy: bool = True):
    """A copy of ``model`` (or, ``copy=False``, ``model`` itself) whose only output is the pooled
    2048-d feature (``flatten``)."""
    import onnx
    from onnx import TensorProto, helper

    out = model
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info("flatten", TensorProto.FLOAT, ["N", FEATURES]))
    return out
