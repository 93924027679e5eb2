"""The ResNet50 v1.5 graph as ONNX, with the MLPerf interface, and the graph variants.

The base graph takes ``input_tensor:0`` (float32 ``[N,3,224,224]``, RGB minus the ImageNet
means) and gives ``softmax_tensor:0`` (float32 ``[N,1001]``) and ``ArgMax:0`` (int64 ``[N]``),
like the MLPerf release. Batch norm is folded into each convolution's weight and bias.

Variants are rewrites of any model with that interface (ours or the MLPerf file):
:func:`with_uint8_input` moves the mean subtraction into the graph, and :func:`with_topk`
fuses the top-k of the foreground classes into it (the seed's "native" postprocessor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import (
    ARGMAX_OUTPUT,
    INPUT_NAME,
    MEANS_RGB,
    NUM_CLASSES,
    SOFTMAX_OUTPUT,
    TOPK_INPUT,
    TOPK_OUTPUT_IDS,
    TOPK_OUTPUT_SCORES,
    UINT8_INPUT_NAME,
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


def weight_shapes() -> dict[str, tuple[int, ...]]:
    """Name → shape of every parameter of the folded model."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in conv_specs():
        shapes[f"{spec.name}.weight"] = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        shapes[f"{spec.name}.bias"] = (spec.out_channels,)
    shapes["fc.weight"] = (NUM_CLASSES, FEATURES)
    shapes["fc.bias"] = (NUM_CLASSES,)
    return shapes


class _GraphWriter:
    """Collects nodes and initializers while the network is laid out."""

    def __init__(self, weights: dict[str, np.ndarray]):
        from onnx import numpy_helper

        self.nodes: list = []
        self.initializers = [
            numpy_helper.from_array(np.ascontiguousarray(a, np.float32), n) for n, a in weights.items()
        ]

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
    """The ResNet50 v1.5 ``onnx.ModelProto`` with the MLPerf interface and these weights."""
    from onnx import TensorProto, helper

    expected = weight_shapes()
    if set(weights) != set(expected):
        raise ValueError(f"weights do not match ResNet50 v1.5: missing {sorted(set(expected) - set(weights))[:3]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weight {name} has shape {weights[name].shape}, expected {shape}")

    g = _GraphWriter(weights)
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
            helper.make_tensor_value_info(SOFTMAX_OUTPUT, TensorProto.FLOAT, ["N", NUM_CLASSES]),
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="resnet50")
    model.ir_version = 6 if opset < 13 else 7
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def features_model(model):
    """A copy of ``model`` whose only output is the pooled 2048-d feature (``flatten``)."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info("flatten", TensorProto.FLOAT, ["N", FEATURES]))
    return out


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def ensure_opset(model, minimum: int = OPSET):
    """``model`` at opset ``minimum`` or newer (upgrades the MLPerf opset-8 file, for example)."""
    from .errors import ModelFileError

    if _opset(model) >= minimum:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises bare RuntimeErrors
        raise ModelFileError(f"model uses opset {_opset(model)} and could not be upgraded to {minimum}: {exc}") from exc


def node_attributes(node) -> dict:
    """An ONNX node's attributes as Python values, by name."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def consumers_of(graph) -> dict[str, list]:
    """Each tensor name of ``graph`` with the nodes that read it, in graph order."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _is_onnx(node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


def _subgraph_inputs(graph) -> set[str]:
    """Names read by the nodes of ``graph``'s subgraphs (If/Loop bodies), at any depth."""
    from onnx import helper

    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            value = helper.get_attribute_value(attribute)
            for body in value if isinstance(value, list) else [value]:
                if hasattr(body, "node"):
                    names.update(name for inner in body.node for name in inner.input)
                    names |= _subgraph_inputs(body)
    return names


def _zero_pad_amounts(pad, constant) -> list[int] | None:
    """The 8 amounts of a Pad that fills with a constant 0 on the two spatial axes only, or
    None when it does anything else or its amounts or fill are not fixed in the graph."""
    attrs = node_attributes(pad)
    if attrs.get("mode", b"constant") != b"constant" or len(pad.input) > 3:  # opset 18 adds axes
        return None
    if "pads" in attrs:  # opset < 11
        amounts, fill = np.asarray(attrs["pads"]), np.asarray(attrs.get("value", 0.0))
    else:
        amounts = constant(pad.input[1]) if len(pad.input) > 1 else None
        fill = constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
    if amounts is None or fill is None or amounts.shape != (8,) or np.any(fill != 0):
        return None
    if np.any(amounts < 0) or np.any(amounts[[0, 1, 4, 5]] != 0):
        return None
    return [int(a) for a in amounts]


def fold_pads_into_convs(model):
    """Move each explicit zero ``Pad`` in front of a convolution (tf2onnx writes one before every
    strided convolution of the MLPerf file) into the convolution's own ``pads``: the same values,
    and a quantizer no longer leaves the padded map in float between a dequantize and a quantize."""
    from onnx import helper, numpy_helper

    graph = model.graph
    overridable = {i.name for i in graph.input}  # an initializer that is also an input can be fed
    initializers = {t.name: t for t in graph.initializer if t.name not in overridable}

    def constant(name: str):
        return numpy_helper.to_array(initializers[name]) if name in initializers else None

    consumers = consumers_of(graph)
    kept_outside = {o.name for o in graph.output} | _subgraph_inputs(graph)
    folded = []
    for pad in graph.node:
        users = consumers.get(pad.output[0], []) if _is_onnx(pad, "Pad") else []
        if len(users) != 1 or pad.output[0] in kept_outside or not _is_onnx(users[0], "Conv"):
            continue
        conv = users[0]
        amounts = _zero_pad_amounts(pad, constant)
        conv_attrs = node_attributes(conv)
        auto_pad = conv_attrs.get("auto_pad", b"NOTSET")
        if amounts is None or list(conv.input).count(pad.output[0]) != 1 or conv.input[0] != pad.output[0]:
            continue  # the Pad must feed the data input only, never the weight
        if auto_pad not in (b"NOTSET", b"VALID"):
            continue
        own = conv_attrs.get("pads", [0, 0, 0, 0]) if auto_pad == b"NOTSET" else [0, 0, 0, 0]
        pads = [amounts[2] + own[0], amounts[3] + own[1], amounts[6] + own[2], amounts[7] + own[3]]
        kept = [a for a in conv.attribute if a.name not in ("auto_pad", "pads")]
        del conv.attribute[:]
        conv.attribute.extend([*kept, helper.make_attribute("pads", pads)])
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    gone = {pad.output[0] for pad in folded}
    for info in [v for v in graph.value_info if v.name in gone]:
        graph.value_info.remove(info)
    used = {name for node in graph.node for name in node.input} | kept_outside
    pad_inputs = {name for pad in folded for name in pad.input[1:]}
    for unused in [t for t in graph.initializer if t.name in pad_inputs and t.name not in used]:
        graph.initializer.remove(unused)
    return model


def with_uint8_input(model):
    """Feed the model the uint8 RGB crop: the graph casts it and subtracts the means itself."""
    from onnx import TensorProto, helper, numpy_helper

    model = ensure_opset(model)
    graph = model.graph
    kept = [i for i in graph.input if i.name != INPUT_NAME]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(UINT8_INPUT_NAME, TensorProto.UINT8, ["N", 3, 224, 224]), *kept])
    means = numpy_helper.from_array(np.asarray(MEANS_RGB, np.float32).reshape(1, 3, 1, 1), "mean_rgb")
    graph.initializer.append(means)
    prologue = [
        helper.make_node("Cast", [UINT8_INPUT_NAME], ["input_float"], name="input_cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["input_float", "mean_rgb"], [INPUT_NAME], name="input_sub_mean"),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(prologue + nodes)
    return model


def with_topk(model):
    """Fuse top-k over the 1000 foreground classes into the graph.

    Outputs ``topk_scores`` (float32 ``[N,k]``) and ``topk_class_ids`` (int64 ``[N,k]``,
    1..1000, never the background class 0); ``k`` is the int64 ``[1]`` input ``top_k``.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = ensure_opset(model)
    graph = model.graph
    consts = {
        "topk_start": np.array([1], np.int64),
        "topk_end": np.array([NUM_CLASSES], np.int64),
        "topk_axis": np.array([1], np.int64),
        "topk_one": np.array(1, np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    graph.input.append(helper.make_tensor_value_info(TOPK_INPUT, TensorProto.INT64, [1]))
    graph.node.extend(
        [
            helper.make_node(
                "Slice", [SOFTMAX_OUTPUT, "topk_start", "topk_end", "topk_axis"], ["foreground"], name="foreground"
            ),
            helper.make_node(
                "TopK", ["foreground", TOPK_INPUT], [TOPK_OUTPUT_SCORES, "topk_index"], name="topk", axis=1
            ),
            helper.make_node("Add", ["topk_index", "topk_one"], [TOPK_OUTPUT_IDS], name="topk_class_id"),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(TOPK_OUTPUT_SCORES, TensorProto.FLOAT, ["N", "k"]),
            helper.make_tensor_value_info(TOPK_OUTPUT_IDS, TensorProto.INT64, ["N", "k"]),
        ]
    )
    return model
