"""Checks on an ONNX model before onnx's checker runs and before any tensor is allocated.

onnx's checker reports the first problem it meets in words about protobuf fields, and reads
tensors only after their size was trusted; these checks come first so that the common ways a
model is broken (a cycle, a dangling or twice-defined value, a domain without an opset, a dim
that would need terabytes) get one line naming the node, op and value, and so that a hostile
file cannot make edlc allocate more than the machine has.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Iterable

import onnx
from onnx import AttributeProto, TensorProto

from edlc.errors import ModelError, ShapeError

MIN_OPSET = 7
# numpy 1.x's limit; no real model comes near it, and a rank-1000 type is a cheap way to make
# shape code quadratic
MAX_RANK = 32
# kernel sizes, strides, dilations and pads beyond this are no real model's; they make ONNX's
# shape inference build dims of billions, and its data propagation then spends minutes on them
MAX_WINDOW = 1 << 20
WINDOW_ATTRS = ("kernel_shape", "strides", "dilations", "pads", "output_padding", "output_shape")
# an axis indexes a dim, so it lies within +-MAX_RANK; onnx's shape inference crashes the process
# on some far larger ones (LayerNormalization's axis 2^31)
AXIS_ATTRS = ("axis", "axes", "perm", "batch_axis", "time_axis", "sequence_axis")
# an einsum equation: terms of letters (one '...' at most) split by ',', then '->' and a term;
# onnx's shape inference loops forever on some that are not (a '/' for the '-')
_TERM = r"\s*(?:[A-Za-z]\s*)*(?:\.\.\.\s*)?(?:[A-Za-z]\s*)*"
EINSUM = re.compile(rf"{_TERM}(?:,{_TERM})*(?:->{_TERM})?")
ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "ai.onnx.preview")
# bytes per element of ONNX element types (sub-byte types round up)
_ITEMSIZE = {TensorProto.STRING: 8, TensorProto.BOOL: 1}


def max_tensor_bytes() -> int:
    """The largest tensor edlc accepts: the memory of this machine, which folds constants,
    builds and (for host targets) runs the model; a bigger tensor could only exhaust it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def itemsize(elem_type: int) -> int:
    if elem_type in _ITEMSIZE:
        return _ITEMSIZE[elem_type]
    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 1


def human_bytes(n: int) -> str:
    if n >= 10**15:
        return f"{n:.2g} bytes"
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def check_dims(dims: Iterable[int | str], elem_type: int, what: str) -> None:
    """Refuse a rank over MAX_RANK, a negative dim, or a static size over max_tensor_bytes()."""
    dims = list(dims)
    if len(dims) > MAX_RANK:
        raise ShapeError(f"{what} has rank {len(dims)}; edlc accepts at most rank {MAX_RANK}")
    fixed = [d for d in dims if isinstance(d, int)]
    bad = [d for d in fixed if d < 0]
    if bad:
        raise ModelError(f"{what} has a negative dim {bad[0]} in {dims}")
    size = math.prod(fixed) * itemsize(elem_type)
    if size > max_tensor_bytes():
        raise ShapeError(f"{what} would take {human_bytes(size)} ({dims}), more than this machine's "
                         f"{human_bytes(max_tensor_bytes())} of memory")


def checked_binding(shape: Iterable[object], elem_type: int, what: str) -> tuple[int, ...]:
    """A shape given for an input (--input-shape, `input_shapes=`) as ints, checked like a
    declared one."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ShapeError(f"{what}: a shape is a sequence of ints, got {shape!r}") from None
    check_dims(dims, elem_type, f"{what} bound to {list(dims)}")
    return dims


def check_tensor(t: TensorProto, what: str) -> None:
    """Check a tensor's declared dims before its data is read."""
    check_dims(t.dims, t.data_type, what)


# ---- opsets ------------------------------------------------------------------------------------
def check_opsets(model: onnx.ModelProto, where: str) -> dict[str, int]:
    """The model's opset imports by domain ('' for ONNX), checked."""
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in opsets:
            raise ModelError(f"{where}: opset_import lists domain '{o.domain}' twice")
        opsets[domain] = int(o.version)
    if "" not in opsets:
        raise ModelError(f"{where}: the model imports no ONNX opset (opset_import lacks the default domain)")
    version, newest = opsets[""], onnx.defs.onnx_opset_version()
    if version < MIN_OPSET:
        raise ModelError(f"{where}: opset {version} is older than the oldest supported ({MIN_OPSET}); "
                         "upgrade it with onnx.version_converter")
    if version > newest:
        raise ModelError(f"{where}: opset {version} is newer than the newest this edlc knows ({newest})")
    return opsets


# ---- graph structure ---------------------------------------------------------------------------
def _node_label(n: onnx.NodeProto, i: int) -> str:
    op = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
    return f"node '{n.name or f'{n.op_type}_{i}'}' ({op})"  # the name import gives it


def _subgraphs(n: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in n.attribute:
        if a.type == AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _reads(n: onnx.NodeProto) -> list[str]:
    """Names a node reads: its inputs and what its subgraphs take from outside them."""
    names = [x for x in n.input if x]
    for g in _subgraphs(n):
        inner = {v.name for v in g.input} | {t.name for t in g.initializer}
        inner |= {o for m in g.node for o in m.output}
        names += [x for m in g.node for x in _reads(m) if x not in inner]
        names += [o.name for o in g.output if o.name not in inner]
    return names


def check_graph(g: onnx.GraphProto, opsets: dict[str, int], where: str,
                outer: frozenset[str] = frozenset()) -> None:
    """Names defined once, every read defined, no cycle, known domains and ops; sorts the
    nodes in place when they are acyclic but out of order (ONNX asks for topological order,
    exporters do not always keep it). Recurses into subgraphs, which see `outer`."""
    scope = f"{where}: graph '{g.name}'" if outer else where
    _check_declared(g, scope)
    defined: dict[str, str] = {}

    def define(name: str, by: str) -> None:
        if name in defined:
            raise ModelError(f"{scope}: value '{name}' is defined twice: by {defined[name]} and by {by}")
        defined[name] = by

    for v in g.input:
        define(v.name, "a graph input")
    for t in g.initializer:
        if t.name in defined and defined[t.name] == "a graph input":
            continue  # an initializer listed as an input too (older IR versions)
        define(t.name, "an initializer")
    for t in g.sparse_initializer:
        define(t.values.name, "a sparse initializer")
    producer: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            if o:
                define(o, _node_label(n, i))
                producer[o] = i
    visible = set(defined) | outer
    for i, n in enumerate(g.node):
        _check_op(n, i, opsets, scope)
        for name in n.input:
            if name and name not in visible:
                raise ModelError(f"{scope}: {_node_label(n, i)}: input '{name}' is not a graph input, "
                                 "an initializer or the output of any node")
        for sub in _subgraphs(n):
            check_graph(sub, opsets, where, frozenset(visible))
    for o in g.output:
        if o.name not in visible:
            raise ModelError(f"{scope}: graph output '{o.name}' is not produced by any node, input or initializer")
    _sort(g, producer, scope)


def _check_declared(g: onnx.GraphProto, scope: str) -> None:
    """Declared types and tensor dims, before onnx's shape inference sees them (a negative dim
    makes its C++ abort the process)."""
    for kind, vis in (("input", g.input), ("output", g.output), ("value", g.value_info)):
        for vi in vis:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                tt = vi.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
                check_dims(dims, tt.elem_type, f"{scope}: {kind} '{vi.name}'")
    for t in g.initializer:
        check_tensor(t, f"{scope}: initializer '{t.name}'")
    for i, n in enumerate(g.node):
        for a in n.attribute:
            what = f"{scope}: {_node_label(n, i)}: attribute '{a.name}'"
            for t in [a.t] if a.type == AttributeProto.TENSOR else a.tensors:
                check_tensor(t, what)
            if a.type == AttributeProto.SPARSE_TENSOR:
                check_dims(a.sparse_tensor.dims, a.sparse_tensor.values.data_type, what)
            if a.type in (AttributeProto.INT, AttributeProto.INTS):
                _check_ints(a, what)
            if n.op_type == "Einsum" and a.name == "equation" and not EINSUM.fullmatch(
                    a.s.decode("utf-8", errors="replace")):
                raise ModelError(f"{what}: {a.s.decode('utf-8', errors='replace')!r} is not an einsum "
                                 "equation (letters and one '...' a term, ',' between, '->' before the output)")


def _check_ints(a: onnx.AttributeProto, what: str) -> None:
    values = [a.i] if a.type == AttributeProto.INT else list(a.ints)
    for names, limit in ((WINDOW_ATTRS, MAX_WINDOW), (AXIS_ATTRS, MAX_RANK)):
        big = [v for v in values if abs(v) > limit] if a.name in names else []
        if big:
            raise ModelError(f"{what} holds {big[0]}; edlc accepts at most {limit} in magnitude there")


def check_text(model: onnx.ModelProto, where: str) -> None:
    """Every name the importer reads must be text: protobuf hands invalid UTF-8 in a string
    field back as bytes, which would fail far from here."""

    def text(value: object, what: str) -> None:
        if not isinstance(value, str):
            raise ModelError(f"{where}: {what} is not valid UTF-8 text ({value!r:.60})")

    def graph(g: onnx.GraphProto, label: str) -> None:
        text(g.name, f"the name of {label}")
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            text(vi.name, f"a value name in {label}")
        for t in g.initializer:
            text(t.name, f"an initializer name in {label}")
            for e in t.external_data:
                text(e.key, f"an external data key of '{t.name}'")
                text(e.value, f"an external data value of '{t.name}'")
        for i, n in enumerate(g.node):
            for field in ("name", "op_type", "domain"):
                text(getattr(n, field), f"the {field} of node #{i} in {label}")
            for v in list(n.input) + list(n.output):
                text(v, f"a value name of node #{i} in {label}")
            for a in n.attribute:
                text(a.name, f"an attribute name of node #{i} in {label}")
                text(a.ref_attr_name, f"an attribute reference of node #{i} in {label}")
                for t in [a.t] if a.type == AttributeProto.TENSOR else a.tensors:
                    for e in t.external_data:
                        text(e.value, f"an external data value of node #{i} in {label}")
                for sub in [a.g] if a.type == AttributeProto.GRAPH else a.graphs:
                    graph(sub, f"a subgraph of node #{i}")

    for o in model.opset_import:
        text(o.domain, "an opset_import domain")
    graph(model.graph, "the main graph")


def _check_op(n: onnx.NodeProto, i: int, opsets: dict[str, int], scope: str) -> None:
    domain = "" if n.domain == "ai.onnx" else n.domain
    if domain not in opsets:
        raise ModelError(f"{scope}: {_node_label(n, i)}: domain '{n.domain}' is not in the model's "
                         f"opset_import ({', '.join(repr(d) for d in opsets)})")
    if domain not in ONNX_DOMAINS:
        return  # a custom op: refused later, with every other unsupported node, if edlc lacks it
    if not onnx.defs.has(n.op_type, domain):
        raise ModelError(f"{scope}: {_node_label(n, i)}: '{n.op_type}' is not an op of domain "
                         f"'{domain or 'ai.onnx'}'")
    try:
        onnx.defs.get_schema(n.op_type, opsets[domain], domain)
    except onnx.defs.SchemaError:
        raise ModelError(f"{scope}: {_node_label(n, i)}: '{n.op_type}' does not exist in opset "
                         f"{opsets[domain]} of domain '{domain or 'ai.onnx'}'") from None


def _sort(g: onnx.GraphProto, producer: dict[str, int], scope: str) -> None:
    """Order g.node topologically (stable); a cycle is an error naming its nodes."""
    nodes = list(g.node)
    deps = [sorted({producer[x] for x in _reads(n) if x in producer}) for n in nodes]
    if all(d < i for i, ds in enumerate(deps) for d in ds):
        return
    state = [0] * len(nodes)  # 0 new, 1 on the stack, 2 done
    order: list[int] = []
    for root in range(len(nodes)):
        if state[root]:
            continue
        stack = [(root, iter(deps[root]))]
        state[root] = 1
        while stack:
            i, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[i] = 2
                order.append(i)
            elif state[nxt] == 1:
                path = [j for j, _ in stack]
                cycle = path[path.index(nxt):] + [nxt]
                raise ModelError(f"{scope}: the graph has a cycle: "
                                 + " -> ".join(_node_label(nodes[j], j) for j in cycle))
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(deps[nxt])))
    del g.node[:]
    g.node.extend(nodes[i] for i in order)
