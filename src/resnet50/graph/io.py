"""Writing an ONNX model file without serializing it whole in memory.

``onnx.save`` serializes the model into one buffer (protobuf's, grown by doubling) and copies it
into Python bytes before writing: two to three times the model's size on top of the model
itself. :func:`write_model` writes the same bytes piece by piece: the model's fields around the
graph, the graph's fields around its initializers, and one initializer at a time.

Protobuf writes known fields in field-number order, which is what makes the pieces concatenate
to exactly ``model.SerializeToString()`` (tested byte for byte).
"""

from __future__ import annotations

import os

_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _opening(field: int, size: int) -> bytes:
    """The tag and length that open a length-delimited field of ``size`` bytes."""
    return _varint(field << 3 | 2) + _varint(size)


def _around(message, skipped: int) -> tuple[bytes, bytes]:
    """``message`` serialized without field ``skipped``: the fields before it, and those after it."""
    before, after = type(message)(), type(message)()
    for field, value in message.ListFields():
        if field.number == skipped:
            continue
        target = before if field.number < skipped else after
        if hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message field
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
    return before.SerializeToString(), after.SerializeToString()


def write_model(model, path: str | os.PathLike) -> None:
    """Write ``model`` (an ``onnx.ModelProto``) to ``path``: the bytes ``onnx.save`` writes, at the
    memory cost of the largest initializer."""
    graph = model.graph
    graph_head, graph_tail = _around(graph, _INITIALIZER_FIELD)
    sizes = [tensor.ByteSize() for tensor in graph.initializer]
    graph_size = len(graph_head) + len(graph_tail) + sum(len(_opening(_INITIALIZER_FIELD, s)) + s for s in sizes)
    model_head, model_tail = _around(model, _GRAPH_FIELD)
    with open(path, "wb") as f:
        f.write(model_head)
        if model.HasField("graph"):
            f.write(_opening(_GRAPH_FIELD, graph_size))
            f.write(graph_head)
            for tensor, size in zip(graph.initializer, sizes):
                f.write(_opening(_INITIALIZER_FIELD, size))
                f.write(tensor.SerializeToString())
            f.write(graph_tail)
        f.write(model_tail)
