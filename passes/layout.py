"""The layout pass: run 2-D convolutions, and the ops around them, in NHWC.

TVM's x86 kernels for NHWC data keep the channels innermost, which vectorizes; ONNX models
are NCHW. Each 2-D `Conv` becomes an `edlc::Conv` (NHWC data, weight transposed once at
compile time to OHWI, or HWIO when depthwise) between a Transpose in and a Transpose out.
A forward sweep then moves the NHWC layout through layout-agnostic ops (elementwise,
BatchNormalization as Mul+Add, pooling, Concat), so the transposes between two convolutions
meet and vanish; a transpose back to NCHW stays only where an op that cares about the layout
(Flatten, Reshape, Gemm) reads the value.

    before: %c = Conv(%x, %w); %r = Relu(%c); %p = GlobalAveragePool(%r); %f = Flatten(%p)
    after:  %t = Transpose[0,2,3,1](%x); %c = edlc::Conv[NHWC](%t, %w_ohwi); %r = Relu(%c)
            %p = edlc::GlobalAveragePool[NHWC](%r); %p2 = Transpose[0,3,1,2](%p); %f = Flatten(%p2)

How it works: when a node is rewritten to NHWC, its old output value becomes the output of a
Transpose(0,3,1,2) of the new NHWC value. A later node finds the NHWC version of an input by
looking for that Transpose; Transposes that end up with no reader are removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from edlc.frontend.onnx import evaluate_node, infer_node_types
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType
from edlc.pass_manager import PassResult, register_pass

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
# Weight layouts of edlc::Conv, as permutations of ONNX's OIHW. TVM's generic NHWC conv reduces
# over (kh, kw, ci) innermost: OHWI keeps that reduction contiguous, 2-4x faster untuned than
# HWIO on deep layers; a depthwise conv has no ci to reduce over and wants HWIO, contiguous
# in the output channel (measured, TVM 0.27 x86 untuned; both are correct for any group).
FROM_OIHW = {"OHWI": (0, 2, 3, 1), "HWIO": (2, 3, 1, 0)}
# Opset the ONNX twin of an edlc NHWC op is evaluated at (AveragePool has dilations from 19).
TWIN_OPSET = {"": 21}

# Ops whose output at each position depends only on the input at that position (input 0);
# further inputs, if any, are scalars (Clip's min and max).
UNARY = frozenset({
    "Abs", "Cast", "Ceil", "Celu", "Clip", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg",
    "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus",
    "Softsign", "Sqrt", "Tanh", "ThresholdedRelu",
})
# Elementwise ops with numpy broadcasting over all their inputs.
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})
# ONNX ops that have an edlc NHWC twin of the same name (registered below).
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
NHWC_OPS = POOLS | {"Conv"}


# ---- the edlc NHWC ops: shape rule and numpy reference through their ONNX twin ---------------

def _permute_type(t: TensorType | None, perm: Sequence[int]) -> TensorType | None:
    if t is None or t.shape is None or len(t.shape) != len(perm):
        return t
    return TensorType(tuple(t.shape[p] for p in perm), t.dtype)


def _to_onnx_perm(node: Node, i: int) -> tuple[int, ...] | None:
    """How input `i` of an edlc NHWC op goes back to the ONNX op's layout (None: as it is)."""
    if i == 0:
        return TO_NCHW
    if i == 1 and node.op == "Conv":
        return tuple(int(i) for i in np.argsort(FROM_OIHW[node.attrs["kernel_layout"]]))
    return None


def _onnx_twin(node: Node, types: Sequence[TensorType | None]) -> Node:
    """The NCHW ONNX node an edlc NHWC node stands for, over fresh values of `types`."""
    attrs = {k: a for k, a in node.attrs.items() if k not in ("layout", "kernel_layout")}
    inputs = [None if v is None else Value(v.name, t) for v, t in zip(node.inputs, types)]
    outputs = [Value(v.name, None) for v in node.outputs]
    return Node(node.op, inputs, outputs, attrs, name=node.name)


def _infer_nhwc(node: Node) -> list[TensorType]:
    types = [None if v is None else v.type for v in node.inputs]
    types = [_permute_type(t, p) if (p := _to_onnx_perm(node, i)) else t for i, t in enumerate(types)]
    return [_permute_type(t, TO_NHWC) for t in infer_node_types(_onnx_twin(node, types), TWIN_OPSET)]


def _reference_nhwc(node: Node, arrays: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    arrays = [a.transpose(p) if a is not None and (p := _to_onnx_perm(node, i)) else a
              for i, a in enumerate(arrays)]
    twin = _onnx_twin(node, [None] * len(node.inputs))
    return [np.ascontiguousarray(o.transpose(TO_NHWC)) for o in evaluate_node(twin, arrays, TWIN_OPSET)]


def _decompose_nhwc(graph: Graph, node: Node) -> list[Value]:
    """Standard ONNX for export: transposes around the ONNX op (weights re-laid as constants)."""
    def relaid(i: int, v: Value | None) -> Value | None:
        perm = _to_onnx_perm(node, i) if v is not None else None
        if perm is None:
            return v
        if v.is_constant:
            return graph.constant(np.ascontiguousarray(v.const.transpose(perm)), f"{v.name}_onnx")
        return graph.add_node("Transpose", [v], {"perm": list(perm)}, before=node,
                              name=f"{node.name}/to_onnx").outputs[0]

    attrs = {k: a for k, a in node.attrs.items() if k not in ("layout", "kernel_layout")}
    inputs = [relaid(i, v) for i, v in enumerate(node.inputs)]
    (y,) = graph.add_node(node.op, inputs, attrs, before=node, name=f"{node.name}/onnx").outputs
    return graph.add_node("Transpose", [y], {"perm": list(TO_NHWC)}, before=node,
                          name=f"{node.name}/to_nhwc").outputs


for _op in sorted(NHWC_OPS):
    register_op(_op, "edlc", infer=_infer_nhwc, reference=_reference_nhwc, decompose=_decompose_nhwc,
                doc=f"ONNX {_op} on NHWC data (attribute layout='NHWC')"
                    + (", weight in `kernel_layout` (OHWI or HWIO)" if _op == "Conv" else ""))


# ---- helpers over values ----------------------------------------------------------------------

def _is_transpose(node: Node | None, perm: Sequence[int]) -> bool:
    return (node is not None and node.op == "Transpose" and node.domain == ""
            and tuple(node.attrs.get("perm", ())) == tuple(perm))


def nhwc_source(v: Value | None) -> Value | None:
    """The NHWC value `v` is a Transpose(0,3,1,2) of, if it is one."""
    if v is None or not _is_transpose(v.producer, TO_NCHW):
        return None
    return v.producer.inputs[0]


def _rank(v: Value | None) -> int | None:
    return None if v is None or v.type is None else v.type.rank


def _is_scalar_like(v: Value) -> bool:
    """A value every layout reads alike: rank 0, or one element with all dims 1."""
    t = v.type
    return t is not None and t.shape is not None and all(d == 1 for d in t.shape)


def _static_spatial(v: Value) -> list[int] | None:
    t = v.type
    if t is None or t.shape is None or len(t.shape) != 4:
        return None
    dims = t.shape[2:]
    return [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None


def explicit_pads(node: Node, kernel: Sequence[int]) -> list[int] | None:
    """ONNX pads [top, left, bottom, right] for a 2-D conv/pool, `auto_pad` resolved (None when
    that needs an unknown spatial size)."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
    if auto == "VALID":
        return [0, 0, 0, 0]
    spatial = _static_spatial(node.inputs[0])
    if spatial is None or node.attrs.get("ceil_mode", 0):
        return None
    strides = node.attrs.get("strides", [1, 1])
    dilations = node.attrs.get("dilations", [1, 1])
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


# ---- the rewrite ------------------------------------------------------------------------------

class _Converter:
    """One forward sweep; each rule returns the NHWC value replacing a node, or None."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.memo: dict[tuple[int, str], Value] = {}  # (value, how) -> its NHWC version
        self.converted = 0

    # -- building blocks --
    def add(self, node: Node, op: str, inputs: Sequence[Value | None], attrs: dict,
            out_type: TensorType | None, domain: str = "", suffix: str = "nhwc") -> Value:
        """A node before `node` with a known output type (no shape inference needed)."""
        new = self.graph.add_node(op, inputs, attrs, domain=domain, name=f"{node.name}/{suffix}",
                                  output_types=[out_type], before=node)
        return new.outputs[0]

    def to_nhwc(self, v: Value, before: Node) -> Value:
        """The NHWC version of NCHW `v`: the value it was transposed from, else one Transpose."""
        src = nhwc_source(v)
        if src is not None:
            return src
        key = (id(v), "transpose")
        if key not in self.memo:
            self.memo[key] = self.add(before, "Transpose", [v], {"perm": list(TO_NHWC)},
                                      _permute_type(v.type, TO_NHWC), suffix="to_nhwc")
        return self.memo[key]

    def constant(self, c: Value, how: str, arr_fn: Callable[[np.ndarray], np.ndarray]) -> Value:
        """`arr_fn` of a constant's array as a new constant, made once per constant and `how`
        (shared weights stay shared)."""
        key = (id(c), how)
        if key not in self.memo:
            arr = np.ascontiguousarray(arr_fn(c.const))
            self.memo[key] = self.graph.constant(arr, f"{c.name}_{how}")
        return self.memo[key]

    def constant_nhwc(self, c: Value) -> Value:
        """A constant operand broadcast against a 4-D NCHW tensor, re-laid for NHWC: [C,1,1]
        becomes [C]."""
        if c.const.size == 1:
            return c

        def relaid(arr: np.ndarray) -> np.ndarray:
            arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape).transpose(TO_NHWC)
            while arr.ndim > 1 and arr.shape[0] == 1:
                arr = arr[0]
            return arr

        return self.constant(c, "nhwc", relaid)

    def out_type(self, node: Node) -> TensorType | None:
        return _permute_type(node.outputs[0].type, TO_NHWC)

    # -- the sweep --
    def visit(self, node: Node) -> None:
        if node.domain != "" or len(node.outputs) != 1 or _rank(node.outputs[0]) != 4:
            return
        rule = RULES.get(node.op)
        new = rule(self, node) if rule is not None else None
        if new is not None:
            self.retire(node, new)

    def retire(self, node: Node, nhwc: Value) -> None:
        """Replace `node` by a Transpose of its NHWC replacement; its output value (name,
        readers, graph output) stays, now produced by the Transpose."""
        (out,) = node.outputs
        main = nhwc.producer
        index = self.graph.nodes.index(node)
        node.drop_inputs()
        back = Node("Transpose", [nhwc], [out], {"perm": list(TO_NCHW)},
                    name=self.graph.unique_node_name(f"{node.name}/to_nchw"))
        self.graph.nodes[index] = back
        if main is not None and main.name == f"{node.name}/nhwc":
            main.name = node.name  # the op keeps its name for reports and profiles
        self.converted += 1


def _conv(cv: _Converter, node: Node) -> Value | None:
    """The seed: a 2-D Conv with a constant weight becomes edlc::Conv on NHWC data."""
    x, w = node.inputs[0], node.inputs[1]
    if _rank(x) != 4 or w is None or not w.is_constant or w.const.ndim != 4:
        return None
    pads = explicit_pads(node, w.const.shape[2:])
    if pads is None:
        return None
    kernel_layout = "HWIO" if w.const.shape[1] == 1 else "OHWI"  # 1 input channel a group
    attrs = {
        "kernel_shape": [int(k) for k in w.const.shape[2:]],
        "strides": list(node.attrs.get("strides", [1, 1])),
        "pads": pads,
        "dilations": list(node.attrs.get("dilations", [1, 1])),
        "group": int(node.attrs.get("group", 1)),
        "layout": "NHWC",
        "kernel_layout": kernel_layout,
    }
    weight = cv.constant(w, kernel_layout.lower(), lambda a: a.transpose(FROM_OIHW[kernel_layout]))
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    inputs = [cv.to_nhwc(x, node), weight] + ([bias] if bias is not None else [])
    return cv.add(node, "Conv", inputs, attrs, cv.out_type(node), domain="edlc")


def _unary(cv: _Converter, node: Node) -> Value | None:
    src = nhwc_source(node.inputs[0])
    if src is None or not all(v is None or _is_scalar_like(v) for v in node.inputs[1:]):
        return None
    return cv.add(node, node.op, [src, *node.inputs[1:]], dict(node.attrs), cv.out_type(node))


def _broadcast_operand(cv: _Converter, v: Value) -> Value | None:
    src = nhwc_source(v)
    if src is not None:
        return src
    if v.is_constant and v.const.ndim <= 4:
        return cv.constant_nhwc(v)
    return v if _is_scalar_like(v) else None


def _broadcast(cv: _Converter, node: Node) -> Value | None:
    """Elementwise with broadcasting: every operand NHWC, a re-laid constant, or a scalar."""
    if not any(nhwc_source(v) is not None for v in node.inputs):
        return None
    inputs = [_broadcast_operand(cv, v) for v in node.inputs]
    if any(v is None for v in inputs):
        return None
    return cv.add(node, node.op, inputs, dict(node.attrs), cv.out_type(node))


def _batchnorm(cv: _Converter, node: Node) -> Value | None:
    """Inference BatchNormalization on NHWC data: x * scale + shift, per channel (last axis)."""
    src = nhwc_source(node.inputs[0])
    params = node.inputs[1:5]
    if src is None or node.attrs.get("training_mode", 0) or not all(
            v is not None and v.is_constant for v in params):
        return None
    gamma, beta, mean, var = (v.const.astype(np.float64) for v in params)
    scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
    shift = beta - mean * scale
    dtype = src.type.dtype
    s = cv.graph.constant(scale.astype(dtype), f"{node.name}.scale")
    b = cv.graph.constant(shift.astype(dtype), f"{node.name}.shift")
    y = cv.add(node, "Mul", [src, s], {}, src.type)
    return cv.add(node, "Add", [y, b], {}, cv.out_type(node))


def _pool(cv: _Converter, node: Node) -> Value | None:
    src = nhwc_source(node.inputs[0])
    if src is None:
        return None
    attrs = {k: a for k, a in node.attrs.items() if k not in ("auto_pad", "storage_order")}
    if not node.op.startswith("Global"):
        kernel = node.attrs.get("kernel_shape", [])
        pads = explicit_pads(node, kernel)
        if len(kernel) != 2 or pads is None:
            return None
        attrs["pads"] = pads
    attrs["layout"] = "NHWC"
    return cv.add(node, node.op, [src], attrs, cv.out_type(node), domain="edlc")


def _concat(cv: _Converter, node: Node) -> Value | None:
    """Concat along any axis: the axis moves with the layout (channels 1 -> 3)."""
    if not any(nhwc_source(v) is not None for v in node.inputs):
        return None
    inputs = []
    for v in node.inputs:
        src = nhwc_source(v)
        if src is None and v.is_constant and v.const.ndim == 4:
            src = cv.constant(v, "nhwc", lambda a: a.transpose(TO_NHWC))
        if src is None:
            return None
        inputs.append(src)
    axis = TO_NHWC.index(node.attrs["axis"] % 4)
    return cv.add(node, "Concat", inputs, {"axis": axis}, cv.out_type(node))


RULES: dict[str, Callable[[_Converter, Node], Value | None]] = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "Concat": _concat,
    **{op: _unary for op in UNARY},
    **{op: _broadcast for op in BROADCAST},
    **{op: _pool for op in POOLS},
}


# ---- clean-up ---------------------------------------------------------------------------------

def _composes_to_identity(inner: Node, outer: Node) -> bool:
    p, q = inner.attrs.get("perm"), outer.attrs.get("perm")
    return p is not None and q is not None and len(p) == len(q) and \
        [p[i] for i in q] == list(range(len(q)))


def cancel_transpose_pairs(graph: Graph) -> bool:
    """Transpose(Transpose(x, p), q) with p then q the identity: readers read x instead."""
    changed = False
    for node in graph.nodes:
        inner = node.inputs[0].producer if node.op == "Transpose" and node.inputs else None
        if inner is None or inner.op != "Transpose" or inner.domain != "" or node.domain != "":
            continue
        out = node.outputs[0]
        if out in graph.outputs or not _composes_to_identity(inner, node):
            continue
        if out.uses:
            out.replace_all_uses_with(inner.inputs[0])
            changed = True
    return changed


def remove_unread_transposes(graph: Graph) -> bool:
    """Drop Transposes nobody reads (last reader first, so chains go in one sweep)."""
    changed = False
    for node in reversed(list(graph.nodes)):
        if node.op == "Transpose" and node.domain == "" and not any(
                v.uses or v in graph.outputs for v in node.outputs):
            graph.remove_node(node)
            changed = True
    return changed


@register_pass("layout", "run 2-D convs and the ops around them in NHWC; transposes at the edges",
               min_opt_level=3)
def layout(graph: Graph) -> PassResult:
    """Convert every 2-D Conv to NHWC, carry the layout forward, cancel transpose pairs (the
    model's own first, so the sweep does not carry the layout through them)."""
    changed = cancel_transpose_pairs(graph)
    cv = _Converter(graph)
    for node in list(graph.nodes):
        cv.visit(node)
    changed |= cancel_transpose_pairs(graph)
    changed |= remove_unread_transposes(graph)
    return PassResult(graph, bool(cv.converted) or changed)
