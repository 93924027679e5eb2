"""The MLPerf file's layout, rebuilt around our weights: what tf2onnx wrote for the real model.

No machine here can download the MLPerf weights, so tests check every rewrite of a model (torch
conversion, int8 quantization) on this copy of the real file's structure as well as on ours.
"""

from __future__ import annotations

import numpy as np


def folded_weights(path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def tf_style_model(weights: dict[str, np.ndarray], opset: int):
    """The same network laid out the way tf2onnx lays out the MLPerf file: TensorFlow names, batch
    norm unfolded, explicit Pad before strided convs, SAME padding, projection shortcut first,
    an HWIO kernel behind a Transpose, SAME_UPPER max pool, ReduceMean + Squeeze, MatMul + Add
    classifier and an Identity before the Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    from resnet50.graph.spec import STAGES, conv_specs

    rng = np.random.default_rng(7)
    nodes, inits = [], []
    count = iter(range(1000))

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def pad(x, p):
        out = f"{x}/pad"
        if opset < 11:
            nodes.append(helper.make_node("Pad", [x], [out], pads=[0, 0, p, p, 0, 0, p, p]))
        else:
            nodes.append(
                helper.make_node("Pad", [x, const(f"{out}/amounts", np.array([0, 0, p, p] * 2, np.int64))], [out])
            )
        return out

    def conv(spec, x):
        i = next(count)
        name = f"resnet_model/conv2d_{i}" if i else "resnet_model/conv2d"
        w, b = weights[f"{spec.name}.weight"], weights[f"{spec.name}.bias"]
        gamma = rng.uniform(0.5, 1.5, spec.out_channels).astype(np.float32)
        var = rng.uniform(0.5, 1.5, spec.out_channels).astype(np.float32)
        mean = rng.normal(0, 0.1, spec.out_channels).astype(np.float32)
        factor = gamma / np.sqrt(var + 1.001e-5)
        attrs = {"kernel_shape": [spec.kernel] * 2, "strides": [spec.stride] * 2}
        if spec.stride > 1 and spec.kernel > 1:
            x, attrs["auto_pad"] = pad(x, spec.kernel // 2), "VALID"
        elif spec.kernel > 1:
            attrs["auto_pad"] = "SAME_UPPER"
        folded = (w / factor[:, None, None, None]).astype(np.float32)
        if i == 0:  # the stem's kernel stored as TensorFlow's HWIO, transposed in the graph
            hwio = const(f"{name}/kernel_hwio", np.ascontiguousarray(folded.transpose(2, 3, 1, 0)))
            nodes.append(helper.make_node("Transpose", [hwio], [f"{name}/kernel"], perm=[3, 2, 0, 1]))
            kernel = f"{name}/kernel"
        else:
            kernel = const(f"{name}/kernel", folded)
        nodes.append(helper.make_node("Conv", [x, kernel], [f"{name}/Conv2D:0"], name=f"{name}/Conv2D", **attrs))
        bn = f"resnet_model/batch_normalization_{i}/FusedBatchNorm"
        params = [
            const(f"{bn}/gamma", gamma),
            const(f"{bn}/beta", (b + mean * factor).astype(np.float32)),
            const(f"{bn}/mean", mean),
            const(f"{bn}/var", var),
        ]
        nodes.append(
            helper.make_node("BatchNormalization", [f"{name}/Conv2D:0", *params], [f"{bn}:0"], epsilon=1.001e-5)
        )
        if not spec.relu:
            return f"{bn}:0"
        nodes.append(helper.make_node("Relu", [f"{bn}:0"], [f"{bn}/Relu:0"]))
        return f"{bn}/Relu:0"

    specs = iter(conv_specs())
    x = conv(next(specs), "input_tensor:0")
    nodes.append(
        helper.make_node("MaxPool", [x], ["pool:0"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    )
    x = "pool:0"
    for stage, (blocks, _, _) in enumerate(STAGES, start=1):
        for block in range(blocks):
            branch_specs = [next(specs) for _ in range(3)]
            shortcut = conv(next(specs), x) if block == 0 else x  # TensorFlow emits the projection first
            branch = x
            for spec in branch_specs:
                branch = conv(spec, branch)
            add = f"resnet_model/add_{stage}_{block}:0"
            nodes.append(helper.make_node("Add", [shortcut, branch], [add]))
            nodes.append(helper.make_node("Relu", [add], [f"{add}/Relu"]))
            x = f"{add}/Relu"
    nodes.append(helper.make_node("ReduceMean", [x], ["mean:0"], axes=[2, 3], keepdims=1))
    nodes.append(helper.make_node("Squeeze", ["mean:0"], ["squeeze:0"], axes=[2, 3]))
    fc_w = const("resnet_model/dense/kernel", np.ascontiguousarray(weights["fc.weight"].T))
    nodes.append(helper.make_node("MatMul", ["squeeze:0", fc_w], ["dense/MatMul:0"]))
    nodes.append(
        helper.make_node("Add", ["dense/MatMul:0", const("resnet_model/dense/bias", weights["fc.bias"])], ["logits:0"])
    )
    nodes.append(helper.make_node("Identity", ["logits:0"], ["final_dense:0"]))
    nodes.append(helper.make_node("Softmax", ["final_dense:0"], ["softmax_tensor:0"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["softmax_tensor:0"], ["ArgMax:0"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        "tf_style",
        [helper.make_tensor_value_info("input_tensor:0", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info("ArgMax:0", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("softmax_tensor:0", TensorProto.FLOAT, ["N", 1001]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    return model
