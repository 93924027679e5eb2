"""graph.io.write_model writes exactly the bytes onnx.save writes."""

from __future__ import annotations

import numpy as np


def test_write_model_writes_the_bytes_of_onnx_save(model_fp32, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from resnet50.graph.io import write_model

    tiny = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
            initializer=[numpy_helper.from_array(np.arange(2, dtype=np.float32), "w")],
            doc_string="a graph",
        ),
        producer_name="test",
    )
    tiny.metadata_props.add(key="k", value="v")
    for model, name in ((tiny, "tiny.onnx"), (onnx.load(model_fp32.source.path), "synthetic.onnx")):
        write_model(model, tmp_path / name)
        assert (tmp_path / name).read_bytes() == model.SerializeToString()
