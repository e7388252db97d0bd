"""Mutations of ONNX models: structure-aware edits of the protobuf (what a buggy exporter or a
hand-edited file produces) and raw byte edits of the serialized file (what a truncated
download or a flipped bit produces).

Every mutation takes a `random.Random`: the fuzz script passes a seeded one, the hypothesis
tests pass `st.randoms()`, so a failing case shrinks to a short list of edits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import onnx
from onnx import AttributeProto, TensorProto

# values that break shape arithmetic: zero, negative, int32 and int64 edges, memory bombs
INTERESTING_INTS = [0, 1, -1, 2, 3, -2, 7, 64, 255, 2**31 - 1, 2**31, -(2**31), 2**32, 2**40,
                    2**62, 2**63 - 1, -(2**63)]
OPS = ["Relu", "Add", "MatMul", "Conv", "Reshape", "Transpose", "Concat", "Gather", "Slice",
       "Softmax", "Cast", "Expand", "ConstantOfShape", "Range", "Tile", "Pad", "Resize",
       "Split", "Squeeze", "Unsqueeze", "ReduceSum", "Gemm", "BatchNormalization", "If", "Loop",
       "Einsum", "TopK", "NonZero", "Where", "Identity", "Shape", "Size", "Flatten", "Clip",
       "LayerNormalization", "Constant", "Scan", "OneHot", "Trilu", "CumSum", "MaxPool"]
DOMAINS = ["", "ai.onnx", "edlc", "com.microsoft", "ai.onnx.ml", "com.example", "ai.onnx.preview"]
# external data locations: inside, missing, and the ways out of the model's folder
LOCATIONS = ["weights.bin", "missing.bin", "../secret.bin", "/etc/passwd", "link.bin",
             "sub/../weights.bin", "sub/../../secret.bin", "", ".", "weights.bin\x00x",
             "C:\\secret.bin", "//secret.bin", "dirlink/secret.bin"]
ELEM_TYPES = [t for t in TensorProto.DataType.values()] + [99, -1]


def _names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    names += [o for n in g.node for o in n.output]
    return names or ["x"]


def _pick_node(model: onnx.ModelProto, rng: random.Random) -> onnx.NodeProto | None:
    nodes = list(model.graph.node)
    return rng.choice(nodes) if nodes else None


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return list(g.input) + list(g.output) + list(g.value_info)


# ---- graph structure ---------------------------------------------------------------------------
def remove_node(model: onnx.ModelProto, rng: random.Random) -> str:
    n = _pick_node(model, rng)
    if n is None:
        return "no node"
    model.graph.node.remove(n)
    return f"removed node {n.name or n.op_type}"


def duplicate_node(model: onnx.ModelProto, rng: random.Random) -> str:
    n = _pick_node(model, rng)
    if n is None:
        return "no node"
    copy = model.graph.node.add()
    copy.CopyFrom(n)
    return f"duplicated node {n.name or n.op_type}"


def swap_nodes(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = model.graph.node
    if len(nodes) < 2:
        return "too few nodes"
    i, j = rng.sample(range(len(nodes)), 2)
    a, b = onnx.NodeProto(), onnx.NodeProto()
    a.CopyFrom(nodes[i])
    b.CopyFrom(nodes[j])
    nodes[i].CopyFrom(b)
    nodes[j].CopyFrom(a)
    return f"swapped nodes {i} and {j}"


def rewire_input(model: onnx.ModelProto, rng: random.Random) -> str:
    """Point a node input at another value: a later one (a cycle), its own output, a ghost."""
    n = _pick_node(model, rng)
    if n is None or not n.input:
        return "no input"
    i = rng.randrange(len(n.input))
    choices = _names(model) + ["ghost", "", *n.output]
    n.input[i] = rng.choice(choices)
    return f"input {i} of {n.name or n.op_type} -> {n.input[i]!r}"


def rename_output(model: onnx.ModelProto, rng: random.Random) -> str:
    n = _pick_node(model, rng)
    if n is None or not n.output:
        return "no output"
    i = rng.randrange(len(n.output))
    n.output[i] = rng.choice(_names(model) + ["", "fresh"])
    return f"output {i} of {n.name or n.op_type} -> {n.output[i]!r}"


def add_or_drop_io(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    kind = rng.randrange(4)
    if kind == 0 and g.output:
        del g.output[rng.randrange(len(g.output))]
        return "dropped a graph output"
    if kind == 1 and g.input:
        del g.input[rng.randrange(len(g.input))]
        return "dropped a graph input"
    if kind == 2:
        vi = g.output.add()
        vi.CopyFrom(onnx.helper.make_tensor_value_info(rng.choice(_names(model) + ["ghost"]),
                                                        TensorProto.FLOAT, None))
        return f"added graph output {vi.name!r}"
    vi = g.input.add()
    vi.CopyFrom(onnx.helper.make_tensor_value_info(rng.choice(_names(model) + ["extra"]),
                                                    rng.choice([1, 7, 9, 8]), [rng.choice([1, 2, "n"])]))
    return f"added graph input {vi.name!r}"


def duplicate_initializer(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    if not g.initializer:
        return "no initializer"
    t = g.initializer.add()
    t.CopyFrom(rng.choice(list(g.initializer)[:-1]))
    return f"duplicated initializer {t.name}"


# ---- types and shapes --------------------------------------------------------------------------
def change_dims(model: onnx.ModelProto, rng: random.Random) -> str:
    vis = [v for v in _value_infos(model) if v.type.HasField("tensor_type")]
    if not vis:
        return "no tensor value info"
    vi = rng.choice(vis)
    shape = vi.type.tensor_type.shape
    kind = rng.randrange(5)
    if kind == 0 and shape.dim:
        d = shape.dim[rng.randrange(len(shape.dim))]
        d.Clear()
        d.dim_value = rng.choice(INTERESTING_INTS)
    elif kind == 1:
        for _ in range(rng.choice([1, 2, 40, 100])):
            shape.dim.add().dim_value = rng.choice([1, 1, 2])
    elif kind == 2 and shape.dim:
        del shape.dim[rng.randrange(len(shape.dim))]
    elif kind == 3 and shape.dim:
        d = shape.dim[rng.randrange(len(shape.dim))]
        d.Clear()
        d.dim_param = rng.choice(["N", "", "?", "x" * 300, "0"])
    else:
        vi.type.tensor_type.ClearField("shape")
    return f"changed dims of {vi.name}"


def change_elem_type(model: onnx.ModelProto, rng: random.Random) -> str:
    vis = [v for v in _value_infos(model) if v.type.HasField("tensor_type")]
    if not vis:
        return "no tensor value info"
    vi = rng.choice(vis)
    kind = rng.randrange(4)
    if kind == 0:
        vi.type.tensor_type.elem_type = rng.choice(ELEM_TYPES)
    elif kind == 1:
        t = onnx.helper.make_sequence_type_proto(vi.type)
        vi.type.CopyFrom(t)
    elif kind == 2:
        vi.type.Clear()
    else:
        vi.type.CopyFrom(onnx.helper.make_optional_type_proto(vi.type))
    return f"changed type of {vi.name}"


def mutate_initializer(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    if not g.initializer:
        return "no initializer"
    t = rng.choice(list(g.initializer))
    kind = rng.randrange(6)
    if kind == 0 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice(INTERESTING_INTS)
    elif kind == 1:
        t.dims.append(rng.choice([1, 2, 2**31, 0]))
    elif kind == 2:
        t.data_type = rng.choice(ELEM_TYPES)
    elif kind == 3 and t.raw_data:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)]
    elif kind == 4:
        t.ClearField("raw_data")
        t.float_data.extend([1.0] * rng.randrange(4))
    else:
        t.name = rng.choice(_names(model) + [""])
    return f"mutated initializer {t.name}"


def external_data(model: onnx.ModelProto, rng: random.Random) -> str:
    """Move a tensor's data to an external file, inside the folder or trying to leave it."""
    tensors = list(model.graph.initializer)
    for n in model.graph.node:
        tensors += [a.t for a in n.attribute if a.type == AttributeProto.TENSOR]
    if not tensors:
        return "no tensor"
    t = rng.choice(tensors)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entries = [("location", rng.choice(LOCATIONS))]
    if rng.random() < 0.7:
        entries.append(("offset", str(rng.choice([0, 0, 4, -1, 2**40, 7]))))
    if rng.random() < 0.7:
        entries.append(("length", str(rng.choice([0, 4, 48, -5, 2**40, 12]))))
    if rng.random() < 0.1:
        entries.append(("checksum", "x"))
    for key, value in entries:
        e = t.external_data.add()
        e.key, e.value = key, value
    return f"tensor {t.name} -> external {dict(entries)}"


# ---- attributes and ops ------------------------------------------------------------------------
def mutate_attribute(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return "no attribute"
    n = rng.choice(nodes)
    a = rng.choice(list(n.attribute))
    kind = rng.randrange(6)
    if kind == 0 and a.type == AttributeProto.INT:
        a.i = rng.choice(INTERESTING_INTS)
    elif kind == 1 and a.type == AttributeProto.INTS:
        if a.ints and rng.random() < 0.5:
            a.ints[rng.randrange(len(a.ints))] = rng.choice(INTERESTING_INTS)
        else:
            a.ints.append(rng.choice(INTERESTING_INTS))
    elif kind == 2 and a.type == AttributeProto.TENSOR:
        if a.t.dims:
            a.t.dims[rng.randrange(len(a.t.dims))] = rng.choice(INTERESTING_INTS)
        else:
            a.t.data_type = rng.choice(ELEM_TYPES)
    elif kind == 3:
        n.attribute.remove(a)
    elif kind == 4:
        a.type = rng.choice(list(AttributeProto.AttributeType.values()))
    else:
        n.attribute.append(onnx.helper.make_attribute(
            rng.choice(["axis", "perm", "to", "value", "mode", "bogus"]),
            rng.choice([3, -7, [0, 5], "nearest", 2**40, [1.5]])))
    return f"mutated attribute {a.name} of {n.name or n.op_type}"


def change_op(model: onnx.ModelProto, rng: random.Random) -> str:
    n = _pick_node(model, rng)
    if n is None:
        return "no node"
    if rng.random() < 0.7:
        n.op_type = rng.choice(OPS)
    else:
        n.domain = rng.choice(DOMAINS)
    return f"node {n.name} -> {n.domain}::{n.op_type}"


def change_opset(model: onnx.ModelProto, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0 and model.opset_import:
        model.opset_import[rng.randrange(len(model.opset_import))].version = rng.choice(
            [1, 6, 7, 9, 11, 13, 18, 21, 23, 99, 2**40, -1, 0])
    elif kind == 1 and model.opset_import:
        del model.opset_import[rng.randrange(len(model.opset_import))]
    elif kind == 2:
        model.opset_import.append(onnx.helper.make_opsetid(rng.choice(DOMAINS), rng.choice([1, 17, 99])))
    else:
        model.ir_version = rng.choice([0, 1, 3, 7, 8, 10, 11, 99, -1])
    return "changed opset/ir version"


PROTO_MUTATIONS: dict[str, Callable[[onnx.ModelProto, random.Random], str]] = {
    f.__name__: f for f in (
        remove_node, duplicate_node, swap_nodes, rewire_input, rename_output, add_or_drop_io,
        duplicate_initializer, change_dims, change_elem_type, mutate_initializer, external_data,
        mutate_attribute, change_op, change_opset,
    )
}


def mutate_model(model: onnx.ModelProto, rng: random.Random, count: int | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """A mutated copy of `model` after `count` (default 1-3) random structure-aware edits, and
    what each edit did."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    log = []
    for _ in range(count if count is not None else rng.randint(1, 3)):
        name = rng.choice(sorted(PROTO_MUTATIONS))
        log.append(f"{name}: {PROTO_MUTATIONS[name](out, rng)}")
    return out, log


# ---- bytes -------------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random, count: int | None = None) -> bytes:
    """`data` after `count` (default 1-4) byte-level edits: flips, overwrites with interesting
    bytes, inserts, deletes, duplicated chunks, truncation."""
    buf = bytearray(data)
    for _ in range(count if count is not None else rng.randint(1, 4)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if kind == 0 and buf and pos < len(buf):
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1 and pos < len(buf):
            buf[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01, 0x08, 0x12, 0x1A])
        elif kind == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            del buf[pos:pos + rng.randint(1, 16)]
        elif kind == 4 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start:start + rng.randint(1, 32)]
            buf[pos:pos] = chunk
        else:
            del buf[pos:]
    return bytes(buf)
