"""ONNX <-> edlc Graph.

Import checks the model, binds symbolic input dims, runs ONNX shape inference, and turns
initializers and Constant nodes into constant values. Export writes a Graph back as an ONNX
model (edlc.* ops in the 'edlc' domain) so other runtimes can run an optimized graph.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from edlc.errors import EdlcError, ModelError, ShapeError, first_line, one_line
from edlc.frontend.onnx_checks import (
    check_dims,
    check_graph,
    check_opsets,
    check_tensor,
    check_text,
    checked_binding,
    human_bytes,
    itemsize,
    max_tensor_bytes,
)
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.types import DTYPES, TensorType, dtype_name, numpy_dtype

InputShapes = Mapping[str, Sequence[int]]
# protobuf cannot parse a message over 2 GiB; bigger models keep their weights as external data
MAX_MODEL_FILE_BYTES = (2 << 30) - 1


# ---- dtypes ------------------------------------------------------------------------------------
def onnx_dtype_name(elem_type: int, what: str = "a tensor") -> str:
    """edlc's dtype name for an ONNX element type; ModelError naming `what` if edlc has none."""
    if elem_type == TensorProto.STRING:
        return "string"
    if elem_type == TensorProto.INT4:
        return "int4"
    if elem_type == TensorProto.UINT4:
        return "uint4"
    try:
        name = dtype_name(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        name = None
    if name not in DTYPES:
        label = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise ModelError(f"{what} has element type {label}, which edlc does not support")
    return name


def onnx_elem_type(name: str) -> int:
    if name == "string":
        return TensorProto.STRING
    if name in ("int4", "uint4"):
        return TensorProto.INT4 if name == "int4" else TensorProto.UINT4
    return helper.np_dtype_to_tensor_dtype(numpy_dtype(name))


# ---- loading -----------------------------------------------------------------------------------
def load_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file; external data is read only from inside the model's folder."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    size = path.stat().st_size
    if size > MAX_MODEL_FILE_BYTES:
        raise ModelError(f"{path}: {size} bytes is over protobuf's 2 GiB limit; save the weights as "
                         "external data (onnx.save(..., save_as_external_data=True))")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a valid ONNX model ({type(e).__name__}: {first_line(e)})") from e
    check_text(model, str(path))
    _load_external_data(model, path.parent.resolve(), path)
    return model


def _load_external_data(model: onnx.ModelProto, base: Path, path: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        what = f"{path}: tensor '{t.name}'"
        check_tensor(t, what)
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = _inside(base, loc, what)
        offset, length = (_external_int(info, key, what) for key in ("offset", "length"))
        available = target.stat().st_size
        offset = offset or 0
        length = available - offset if length is None else length
        if offset + length > available or length < 0:
            raise ModelError(f"{what}: external data asks for bytes {offset}..{offset + length} of "
                             f"'{loc}', which has {available}")
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


def _inside(base: Path, loc: str, what: str) -> Path:
    """The file external data at `loc` names, which must lie inside `base` (the model's folder;
    symlinks are followed before the check)."""
    if not loc or "\0" in loc:
        raise ModelError(f"{what}: external data location {loc!r} is not a file name")
    target = (base / loc).resolve()
    if os.path.isabs(loc) or ".." in Path(loc).parts or not target.is_relative_to(base):
        raise ModelError(f"{what} points at external data '{loc}' outside the model's folder")
    if not target.is_file():
        raise ModelError(f"{what}: external data file '{loc}' is missing")
    return target


def _external_int(info: dict[str, str], key: str, what: str) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        raise ModelError(f"{what}: external data {key} '{info[key]}' is not a number") from None
    if value < 0:
        raise ModelError(f"{what}: external data {key} {value} is negative")
    return value


def load_onnx(model: str | os.PathLike | onnx.ModelProto, input_shapes: InputShapes | None = None) -> Graph:
    """Import an ONNX model (path or ModelProto) into an edlc Graph, binding symbolic input
    dims from `input_shapes` ({"x": (1, 3, 224, 224)})."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model_proto(model)
    where = "model" if isinstance(model, onnx.ModelProto) else str(model)
    proto = _checked_copy(proto, where)
    if input_shapes:
        bind_input_shapes(proto, input_shapes, where)
    proto = _infer_shapes(proto, where)
    return import_model(proto, where)


def _checked_copy(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """A copy of the model, checked: edlc's own checks first (one line naming the node), then
    onnx's checker. Nodes out of topological order are sorted in the copy."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    check_text(copy, where)
    opsets = check_opsets(copy, where)
    check_graph(copy.graph, opsets, where)
    try:
        onnx.checker.check_model(copy)
    except Exception as e:
        raise ModelError(f"{where}: invalid ONNX model: {one_line(e)}") from e
    return copy


def bind_input_shapes(proto: onnx.ModelProto, input_shapes: InputShapes, where: str = "model") -> None:
    """Set the graph inputs' dims to the given shapes, checking rank and fixed dims."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in inits}
    for name, shape in input_shapes.items():
        if name not in inputs:
            raise ShapeError(f"{where}: --input-shape names '{name}', but the model's inputs are {sorted(inputs)}")
        tt = inputs[name].type.tensor_type
        shape = checked_binding(shape, tt.elem_type, f"{where}: input '{name}'")
        dims = tt.shape.dim
        if tt.HasField("shape") and len(dims) != len(shape):
            have = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
            raise ShapeError(f"{where}: input '{name}' has rank {len(dims)} {have}, got shape {list(shape)}")
        if not tt.HasField("shape") or len(dims) == 0:
            tt.shape.Clear()
            for _ in shape:
                tt.shape.dim.add()
        for d, s in zip(tt.shape.dim, shape):
            if d.HasField("dim_value") and d.dim_value != s:
                raise ShapeError(f"{where}: input '{name}' has fixed dim {d.dim_value}, cannot bind it to {s}")
            d.Clear()
            d.dim_value = s


def _infer_shapes(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ShapeError(f"{where}: ONNX shape inference failed: {one_line(e)}") from e


# ---- import ------------------------------------------------------------------------------------
def tensor_type_of(vi: onnx.ValueInfoProto | onnx.TypeProto, what: str) -> TensorType | None:
    tp = vi.type if isinstance(vi, onnx.ValueInfoProto) else vi
    kind = tp.WhichOneof("value")
    if kind is None:
        return None
    if kind != "tensor_type":
        raise ModelError(f"{what} has a {kind.replace('_type', '')} type; edlc supports tensors only")
    tt = tp.tensor_type
    if tt.elem_type == TensorProto.UNDEFINED:
        return None
    dtype = onnx_dtype_name(tt.elem_type, what)
    if not tt.HasField("shape"):
        return TensorType(None, dtype)
    dims: list[int | str] = []
    for i, d in enumerate(tt.shape.dim):
        # a declared negative dim was refused before inference; onnx's inference writes -1
        # for a dim it could not work out (Split of an unknown size)
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or f"?{i}")
    check_dims(dims, tt.elem_type, what)
    return TensorType(tuple(dims), dtype)


def tensor_array(t: TensorProto, what: str) -> np.ndarray:
    """A TensorProto's data as an array, its element type and size checked before it is read."""
    check_tensor(t, what)
    onnx_dtype_name(t.data_type, what)  # refuses element types edlc has no dtype for
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:  # data that does not fill the declared shape, and such
        raise ModelError(f"{what} cannot be read: {one_line(e)}") from e
    if dtype_name(arr.dtype) not in DTYPES:
        raise ModelError(f"{what} has element type {arr.dtype}, which edlc does not support")
    return arr


def import_model(proto: onnx.ModelProto, where: str = "model") -> Graph:
    """A checked, shape-inferred ModelProto as an edlc Graph; errors start with `where`."""
    opset = {(o.domain if o.domain != "ai.onnx" else ""): int(o.version) for o in proto.opset_import}
    graph = Graph(proto.graph.name or "main", opset)
    try:
        _import_graph(proto.graph, graph, {})
    except EdlcError as e:
        raise type(e)(f"{where}: {e}") from e
    return graph


def _import_graph(gp: onnx.GraphProto, graph: Graph, outer: dict[str, Value]) -> None:
    scope: dict[str, Value] = dict(outer)
    types = {vi.name: vi for vi in list(gp.value_info) + list(gp.output)}
    for t in gp.initializer:
        scope[t.name] = _const_value(graph, t.name, tensor_array(t, f"initializer '{t.name}'"))
    for sp in gp.sparse_initializer:
        name = sp.values.name
        scope[name] = _const_value(graph, name, _dense(sp, f"sparse initializer '{name}'"))
    for vi in gp.input:
        if vi.name in scope and vi.name not in outer:
            continue  # an initializer listed as input (old exporters): a constant
        t = tensor_type_of(vi, f"input '{vi.name}'")
        if t is None:
            raise ModelError(f"input '{vi.name}' has no type")
        v = Value(vi.name, t)
        graph._names.add(vi.name)
        graph.inputs.append(v)
        scope[vi.name] = v
    for i, np_ in enumerate(gp.node):
        name = np_.name or f"{np_.op_type}_{i}"
        if np_.op_type == "Constant" and np_.domain in ("", "ai.onnx"):
            arr = constant_array(np_, f"node '{name}' (Constant)")
            scope[np_.output[0]] = _const_value(graph, np_.output[0], arr)
            continue
        inputs = []
        for nm in np_.input:
            if nm == "":
                inputs.append(None)
            elif nm not in scope:
                raise ModelError(f"node '{name}' ({np_.op_type}): input '{nm}' is not defined by any node, "
                                 "input or initializer before it")
            else:
                inputs.append(scope[nm])
        outputs = []
        for nm in np_.output:
            vi = types.get(nm)
            t = tensor_type_of(vi, f"output '{nm}' of node '{name}' ({np_.op_type})") if vi is not None else None
            outputs.append(Value(nm, t))
            graph._names.add(nm)
        node = Node(np_.op_type, inputs, outputs, _decode_attrs(np_, name, graph, scope),
                    name=graph.unique_node_name(name), domain=np_.domain if np_.domain != "ai.onnx" else "")
        graph.nodes.append(node)
        for nm, v in zip(np_.output, outputs):
            if nm:
                scope[nm] = v
    for vi in gp.output:
        if vi.name not in scope:
            raise ModelError(f"graph output '{vi.name}' is not produced by any node")
        v = scope[vi.name]
        if v.type is None:
            v.type = tensor_type_of(vi, f"output '{vi.name}'")
        graph.outputs.append(v)


def _const_value(graph: Graph, name: str, arr: np.ndarray) -> Value:
    graph._names.add(name)
    return Value(name, TensorType.of(arr), const=arr)


_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints",
                   "value_string", "value_strings", "sparse_value")


def constant_array(np_: onnx.NodeProto, what: str) -> np.ndarray:
    """The value of a Constant node, read directly (onnx's reference evaluator would trust a
    sparse tensor's dims and allocate them, and fails without a word on a missing value)."""
    given = [a for a in np_.attribute if a.name in _CONSTANT_ATTRS]
    if len(given) != 1 or len(np_.attribute) != 1:
        names = [a.name for a in np_.attribute]
        raise ModelError(f"{what}: needs exactly one of the attributes {', '.join(_CONSTANT_ATTRS)}; "
                         f"has {names or 'none'}")
    a = given[0]
    expected = {"value": AttributeProto.TENSOR, "sparse_value": AttributeProto.SPARSE_TENSOR,
                "value_float": AttributeProto.FLOAT, "value_floats": AttributeProto.FLOATS,
                "value_int": AttributeProto.INT, "value_ints": AttributeProto.INTS,
                "value_string": AttributeProto.STRING, "value_strings": AttributeProto.STRINGS}[a.name]
    if a.type != expected:
        raise ModelError(f"{what}: attribute '{a.name}' has type "
                         f"{AttributeProto.AttributeType.Name(a.type)}, expected "
                         f"{AttributeProto.AttributeType.Name(expected)}")
    if a.name == "value":
        return tensor_array(a.t, f"{what}: value")
    if a.name == "sparse_value":
        return _dense(a.sparse_tensor, f"{what}: sparse_value")
    value = helper.get_attribute_value(a)
    if a.name in ("value_string", "value_strings"):
        return np.array(value, dtype=object)
    return np.array(value, dtype=np.float32 if "float" in a.name else np.int64)


def _dense(sp: onnx.SparseTensorProto, what: str) -> np.ndarray:
    """A sparse tensor as a dense array, its dims checked before the array is allocated."""
    check_dims(sp.dims, sp.values.data_type, what)
    values = tensor_array(sp.values, f"{what} values").reshape(-1)
    indices = tensor_array(sp.indices, f"{what} indices").astype(np.int64)
    shape = tuple(int(d) for d in sp.dims)
    size = int(np.prod(shape, dtype=np.int64))
    if indices.ndim == 2:  # [nnz, rank] coordinates
        if indices.shape[1] != len(shape):
            raise ModelError(f"{what}: indices of shape {list(indices.shape)} do not fit dims {list(shape)}")
        flat = np.ravel_multi_index(tuple(indices.T), shape, mode="wrap") if size else indices[:, 0]
        if size and np.any((indices < 0) | (indices >= np.array(shape))):
            raise ModelError(f"{what}: an index lies outside dims {list(shape)}")
    else:
        flat = indices.reshape(-1)
    if flat.shape[0] != values.shape[0] or np.any((flat < 0) | (flat >= size)):
        raise ModelError(f"{what}: {values.shape[0]} values with {flat.shape[0]} indices do not "
                         f"fit dims {list(shape)}")
    out = np.zeros(size, dtype=values.dtype)
    out[flat] = values
    return out.reshape(shape)


def _decode_attrs(np_: onnx.NodeProto, name: str, graph: Graph, scope: dict[str, Value]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for a in np_.attribute:
        what = f"node '{name}' ({np_.op_type}): attribute '{a.name}'"
        if a.ref_attr_name:
            raise ModelError(f"{what}: attribute references are only valid inside functions")
        if a.type == AttributeProto.GRAPH:
            attrs[a.name] = _subgraph(a.g, graph, scope)
        elif a.type == AttributeProto.GRAPHS:
            attrs[a.name] = [_subgraph(g, graph, scope) for g in a.graphs]
        elif a.type == AttributeProto.TENSOR:
            attrs[a.name] = tensor_array(a.t, what)
        elif a.type == AttributeProto.TENSORS:
            attrs[a.name] = [tensor_array(t, what) for t in a.tensors]
        elif a.type == AttributeProto.SPARSE_TENSOR:
            attrs[a.name] = _dense(a.sparse_tensor, what)
        elif a.type == AttributeProto.STRING:
            attrs[a.name] = a.s.decode("utf-8", errors="surrogateescape")
        elif a.type == AttributeProto.STRINGS:
            attrs[a.name] = [s.decode("utf-8", errors="surrogateescape") for s in a.strings]
        elif a.type == AttributeProto.INTS:
            attrs[a.name] = [int(x) for x in a.ints]
        elif a.type == AttributeProto.FLOATS:
            attrs[a.name] = [float(x) for x in a.floats]
        elif a.type in (AttributeProto.INT, AttributeProto.FLOAT):
            attrs[a.name] = helper.get_attribute_value(a)
        else:
            raise ModelError(f"{what} has type {AttributeProto.AttributeType.Name(a.type)}, "
                             "which edlc does not support")
    return attrs


def _subgraph(gp: onnx.GraphProto, parent: Graph, scope: dict[str, Value]) -> Graph:
    sub = Graph(gp.name or "body", parent.opset, parent=parent)
    _import_graph(gp, sub, scope)
    return sub


# ---- export ------------------------------------------------------------------------------------
def value_info(v: Value) -> onnx.ValueInfoProto:
    t = v.type
    if t is None:
        return helper.make_value_info(v.name, onnx.TypeProto())
    shape = None if t.shape is None else [d if isinstance(d, int) else (None if d.startswith("?") else d) for d in t.shape]
    return helper.make_tensor_value_info(v.name, onnx_elem_type(t.dtype), shape)


def _tensor(arr: np.ndarray, name: str) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _encode_attr(node: Node, key: str, a: Any, opset: dict[str, int]) -> AttributeProto:
    if isinstance(a, Graph):
        return helper.make_attribute(key, graph_to_proto(a, opset))
    if isinstance(a, np.ndarray):
        return helper.make_attribute(key, _tensor(a, ""))
    if isinstance(a, list) and not a:
        return helper.make_attribute(key, [], attr_type=_schema_attr_type(node, key, opset))
    if isinstance(a, list) and isinstance(a[0], Graph):
        return helper.make_attribute(key, [graph_to_proto(g, opset) for g in a])
    if isinstance(a, list) and isinstance(a[0], np.ndarray):
        return helper.make_attribute(key, [_tensor(x, "") for x in a])
    # strings were decoded with surrogateescape: bytes that are not UTF-8 go back as they came
    if isinstance(a, str):
        return helper.make_attribute(key, a.encode("utf-8", "surrogateescape"))
    if isinstance(a, list) and isinstance(a[0], str):
        return helper.make_attribute(key, [s.encode("utf-8", "surrogateescape") for s in a])
    return helper.make_attribute(key, a)


def _schema_attr_type(node: Node, key: str, opset: dict[str, int]) -> int:
    try:
        schema = onnx.defs.get_schema(node.op, opset.get(node.domain, 1), node.domain)
        return int(schema.attributes[key].type)
    except Exception:
        return AttributeProto.INTS


def node_to_proto(n: Node, opset: dict[str, int]) -> onnx.NodeProto:
    proto = helper.make_node(
        n.op, [v.name if v is not None else "" for v in n.inputs], [v.name for v in n.outputs],
        name=n.name, domain=n.domain or None,
    )
    proto.attribute.extend(_encode_attr(n, k, a, opset) for k, a in n.attrs.items())
    return proto


def graph_to_proto(g: Graph, opset: dict[str, int] | None = None) -> onnx.GraphProto:
    opset = opset or g.opset
    outer = {id(v) for v in g.free_values()}
    inits = [_tensor(v.const, v.name) for v in g.constants() if id(v) not in outer]
    inner = [v for n in g.nodes for v in n.outputs if v not in g.outputs and v.type is not None]
    return helper.make_graph(
        [node_to_proto(n, opset) for n in g.nodes], g.name,
        [value_info(v) for v in g.inputs], [value_info(v) for v in g.outputs],
        initializer=inits, value_info=[value_info(v) for v in inner],
    )


def to_onnx(g: Graph, ir_version: int | None = None, decompose: bool = True) -> onnx.ModelProto:
    """The graph as an ONNX model. With `decompose`, edlc ops that have a standard-ONNX form
    (fused groups, recognized ops) are written in it, so other runtimes can run the graph;
    the rest keep their domain ('edlc')."""
    if decompose:
        g = standardized(g)
    opset = dict(g.opset)
    for n in g.all_nodes():
        if n.domain and n.domain not in opset:
            opset[n.domain] = 1
    model = helper.make_model(
        graph_to_proto(g, opset),
        opset_imports=[helper.make_opsetid(d, v) for d, v in opset.items()],
        producer_name="edlc",
    )
    model.ir_version = ir_version or min(model.ir_version, 10)
    return model


def standardized(g: Graph) -> Graph:
    """A copy of `g` with every edlc op that registered a decomposition replaced by it."""
    from edlc.ir.ops import op_def

    def has_decomposition(n: Node) -> bool:
        d = op_def(n.op, n.domain) if n.domain else None
        return d is not None and d.decompose is not None

    if not any(has_decomposition(n) for n in g.all_nodes()):
        return g
    g = g.copy()
    _decompose_in(g, has_decomposition)
    return g


def _decompose_in(g: Graph, has_decomposition) -> None:
    from edlc.ir.ops import op_def

    changed = True
    while changed:  # a decomposition may itself hold edlc ops (a fused group of edlc.Gelu)
        changed = False
        for node in list(g.nodes):
            for sub in node.subgraphs:
                if node.domain != "edlc":
                    _decompose_in(sub, has_decomposition)
            if not has_decomposition(node):
                continue
            new = op_def(node.op, node.domain).decompose(g, node)
            for old, v in zip(node.outputs, new):
                if v.type is None:
                    v.type = old.type
                if old in g.outputs:
                    old.name, v.name = v.name, old.name
                g.replace_all_uses(old, v)
            g.remove_node(node)
            changed = True


# ---- one-node inference and evaluation (default op rules) --------------------------------------
def _one_node_model(node: Node, opset: dict[str, int], input_arrays: Sequence[np.ndarray | None] | None) -> onnx.ModelProto:
    inputs, inits = [], []
    seen: set[str] = set()
    for i, v in enumerate(list(node.inputs) + node.captured_values()):
        if v is None or v.name in seen:
            continue
        seen.add(v.name)
        arr = input_arrays[i] if input_arrays is not None and i < len(node.inputs) else v.const
        if arr is not None:
            inits.append(_tensor(arr, v.name))
        else:
            inputs.append(value_info(v))
    outs = [helper.make_value_info(v.name, onnx.TypeProto()) for v in node.outputs]
    g = helper.make_graph([node_to_proto(node, opset)], "one", inputs, outs, initializer=inits)
    ops = [helper.make_opsetid(d, v) for d, v in opset.items()]
    model = helper.make_model(g, opset_imports=ops)
    model.ir_version = min(model.ir_version, 10)
    return model


def infer_node_types(node: Node, opset: dict[str, int]) -> list[TensorType]:
    """Output types of one ONNX node, by ONNX's own shape inference (constants are passed as
    initializers so data-dependent shapes such as Reshape's resolve)."""
    inferred = _infer_one(_one_node_model(node, opset, None), node)
    found = {vi.name: vi for vi in list(inferred.graph.output) + list(inferred.graph.value_info)}
    types = []
    for v in node.outputs:
        vi = found.get(v.name)
        t = tensor_type_of(vi, f"output '{v.name}' of node '{node.name}' ({node.op})") if vi is not None else None
        types.append(t if t is not None else v.type)
    return types


def _infer_one(model: onnx.ModelProto, node: Node) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        raise ShapeError(f"node '{node.name}' ({node.op}): {one_line(e)}") from e


def evaluate_node(node: Node, inputs: Sequence[np.ndarray | None], opset: dict[str, int]) -> list[np.ndarray]:
    """Run one ONNX node with ONNX's reference evaluator. Its outputs' sizes are inferred from
    the inputs' values first: a graph's declared types can be wrong, and a Range, Expand or
    broadcast over constants can ask for more memory than the machine has."""
    from onnx.reference import ReferenceEvaluator

    model = _one_node_model(node, opset, inputs)
    limit = max_tensor_bytes() // 4  # inputs and outputs live together while a node runs
    for vi in _infer_one(model, node).graph.output:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.HasField("shape") and None not in dims:
            size = int(np.prod(dims, dtype=object)) * itemsize(t.elem_type)
            if size > limit:
                raise ShapeError(f"node '{node.name}' ({node.op}): evaluating it would make output "
                                 f"'{vi.name}' {dims} of {human_bytes(size)}, over a quarter of this "
                                 f"machine's memory ({human_bytes(limit)})")
    outs = ReferenceEvaluator(model).run(None, {})
    return [np.asarray(o) for o in outs]
