"""ONNX graph rewriting: opset upgrade, attribute and consumer lookup, Pad folding, and the
fused-input (uint8, means inside) and fused top-k variants. Apart from the v1.5 graph spec,
these work on any model with the MLPerf interface, the MLPerf file included."""

from __future__ import annotations

import numpy as np

from resnet50.core.constants import (
    INPUT_NAME,
    SOFTMAX_OUTPUT,
    TOPK_INPUT,
    TOPK_OUTPUT_IDS,
    TOPK_OUTPUT_SCORES,
    UINT8_INPUT_NAME,
)
from resnet50.core.errors import ModelFileError
from resnet50.core.registry import MLPERF_CLASSES, MLPERF_PREPROCESSING, ClassLayout, Preprocessing
from resnet50.graph.spec import OPSET


def opset_of(model) -> int:
    """The default-domain opset an ONNX model imports."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def ensure_opset(model, minimum: int = OPSET):
    """``model`` at opset ``minimum`` or newer (upgrades the MLPerf opset-8 file, for example)."""

    if opset_of(model) >= minimum:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises bare RuntimeErrors
        raise ModelFileError(
            f"model uses opset {opset_of(model)} and could not be upgraded to {minimum}: {exc}"
        ) from exc


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


def with_uint8_input(model, preprocessing: Preprocessing = MLPERF_PREPROCESSING):
    """Feed the model the uint8 RGB crop: the graph casts it and normalizes it itself, with the
    same float32 operations in the same order as :func:`resnet50.processing.preprocess.normalize`."""
    from onnx import TensorProto, helper, numpy_helper

    model = ensure_opset(model)
    graph = model.graph
    kept = [i for i in graph.input if i.name != INPUT_NAME]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(UINT8_INPUT_NAME, TensorProto.UINT8, ["N", 3, 224, 224]), *kept])
    steps = [("Div", "input_scale", np.float32(preprocessing.scale))] if preprocessing.scale != 1.0 else []
    steps.append(("Sub", "mean_rgb", np.asarray(preprocessing.mean, np.float32).reshape(1, 3, 1, 1)))
    if any(s != 1.0 for s in preprocessing.std):
        steps.append(("Div", "std_rgb", np.asarray(preprocessing.std, np.float32).reshape(1, 3, 1, 1)))
    prologue = [helper.make_node("Cast", [UINT8_INPUT_NAME], ["input_float"], name="input_cast", to=TensorProto.FLOAT)]
    x = "input_float"
    for i, (op, const, value) in enumerate(steps):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), const))
        y = INPUT_NAME if i == len(steps) - 1 else f"input_{const}"
        prologue.append(helper.make_node(op, [x, const], [y], name=f"input_{op.lower()}_{const}"))
        x = y
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(prologue + nodes)
    return model


def with_topk(model, classes: ClassLayout = MLPERF_CLASSES):
    """Fuse top-k over the foreground classes into the graph.

    Outputs ``topk_scores`` (float32 ``[N,k]``) and ``topk_class_ids`` (int64 ``[N,k]``,
    1..N, never a background column); ``k`` is the int64 ``[1]`` input ``top_k``.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = ensure_opset(model)
    graph = model.graph
    consts = {
        "topk_start": np.array([classes.first], np.int64),
        "topk_end": np.array([classes.count], np.int64),
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
