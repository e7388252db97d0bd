"""Mixed precision: float32 weights and activations become float16 or bfloat16 inside the graph.

    before: %y = Conv(%x: float32, %w: const float32); %z = ReduceSum(%y); %o = Relu(%z)
    after:  %xh = Cast<to=FLOAT16>(%x); %y = Conv(%xh, %w: const float16)       (float16)
            %yf = Cast<to=FLOAT>(%y); %z = ReduceSum(%yf)          (kept float32: range)
            %zh = Cast<to=FLOAT16>(%z); %oh = Relu(%zh); %o = Cast<to=FLOAT>(%oh)

The model's interface keeps its float32 inputs and outputs: casts sit at the inputs and
outputs, and around the ops kept in float32. Weights are rounded once, to nearest (float16
weights beyond +-65504 are clipped to it rather than becoming inf), which halves their bytes.

What runs in the half type:
- compute ops (`COMPUTE`): convolutions, matmuls, elementwise arithmetic and activations,
  softmax, pools and bounded reductions (mean, max, min);
- data movement (`MOVE`: reshape, transpose, concat, gather, ...) where it reads a half value or
  a float32 weight (an embedding table), and stays float32 otherwise, so a float32 region
  carries no casts;
- ops that read any type and make no float (`FOLLOW`: Shape, Size, Cast) read half values as
  they are.
Everything else (control flow, int8 and sparse kernels, ops without a rule here) stays float32.

Numerically sensitive ops are handled in three ways, chosen by measurement (README, "Half
precision"):
- the sums of every convolution and matmul, and reductions whose result stays within their
  input's range (Softmax, ReduceMean, average pools), keep half inputs and outputs and are
  *computed* in float32 inside their kernel (`edlc.lower.precision`): summed in float16, BERT
  and ResNet-18 lose 11-16 dB of SQNR;
- normalizations (LayerNorm, RMSNorm, Group/InstanceNorm) stay float32 (`KEEP_FLOAT32`): in
  half they round three times (normalized, scaled, shifted), 3-4 dB on BERT;
- ops whose result can leave float16's range (sums, sums of squares, L1/L2 norms, products,
  Exp, Pow) stay float32 for float16; bfloat16 has float32's range and keeps only the sums
  (which it would round at every step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import TensorProto

from edlc.errors import EdlcError
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.types import TensorType, numpy_dtype
from edlc.pass_manager import PassInfo, PassResult, get_pass, register_pass

# `quantize=` names and the dtypes they convert to
HALF_TYPES = {"fp16": "float16", "bf16": "bfloat16"}
_ONNX_TYPE = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
              "float32": TensorProto.FLOAT}
FLOAT16_MAX = 65504.0

COMPUTE = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum",
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min", "Sum", "Mean",
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
    "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Sqrt", "Reciprocal",
    "Exp", "Log", "Pow", "Floor", "Ceil", "Round", "Sign",
    "Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "LpNormalization",
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2",
    "ReduceLogSumExp", "ReduceProd", "CumSum",
    "AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "Resize",
    "edlc.Conv", "edlc.MaxPool", "edlc.AveragePool", "edlc.GlobalAveragePool",
    "edlc.GlobalMaxPool", "edlc.Gelu", "edlc.Attention", "edlc.fused",
})
MOVE = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Identity", "DepthToSpace",
    "SpaceToDepth", "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "ArgMax", "ArgMin", "TopK",
})
FOLLOW = frozenset({"Shape", "Size", "Cast"})
# inputs that are float but not of the op's element type (they keep theirs)
FIXED_INPUTS = {"Resize": (1, 2)}

_SUMS = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
         "CumSum", "LpNormalization")
# in half, a normalization rounds its normalized values, then its scale, then its shift; in
# float32 once at the end: +3 dB (float16) and +4 dB (bfloat16) SQNR on BERT, same speed
_NORMS = ("LayerNormalization", "RMSNormalization", "GroupNormalization", "InstanceNormalization")
_NORM_REASON = "normalized, scaled and shifted in float32, rounded once"
KEEP_FLOAT32: dict[str, dict[str, str]] = {
    "float16": {**{op: "its result can exceed float16's range (65504)" for op in (*_SUMS, "Exp", "Pow")},
                **{op: _NORM_REASON for op in _NORMS}},
    "bfloat16": {**{op: "its sum would be rounded to bfloat16 at every step" for op in _SUMS},
                 **{op: _NORM_REASON for op in _NORMS}},
}


@dataclass
class PrecisionReport:
    """What the conversion did: nodes run in the half type, ops kept float32 and why, casts
    added, and the weights' bytes before and after."""

    dtype: str
    converted: int = 0
    kept: dict[str, tuple[int, str]] = field(default_factory=dict)  # op -> (nodes, reason)
    casts: int = 0
    clipped: int = 0  # float16 weights beyond +-65504, clipped
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    accumulate: str = "float32"  # what convs and matmuls sum in (a lowering choice, recorded)

    def keep(self, op: str, reason: str) -> None:
        count, _ = self.kept.get(op, (0, reason))
        self.kept[op] = (count + 1, reason)

    def lines(self) -> list[str]:
        out = [f"{self.converted} nodes run in {self.dtype}, {self.casts} casts added; weights "
               f"{self.weight_bytes_before:,} -> {self.weight_bytes_after:,} bytes"]
        out += [f"kept float32: {op} x{n} ({reason})" for op, (n, reason) in sorted(self.kept.items())]
        if self.clipped:
            out.append(f"{self.clipped} weight values beyond +-65504 clipped to it")
        return out

    def summary(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "converted_nodes": self.converted, "casts": self.casts,
                "kept_float32": {op: n for op, (n, _) in sorted(self.kept.items())},
                "clipped_weights": self.clipped, "weight_bytes_before": self.weight_bytes_before,
                "weight_bytes_after": self.weight_bytes_after, "accumulate": self.accumulate}


def format_summary(summary: dict[str, Any]) -> str:
    """One line for `edlc compile` from a report's summary (as the manifest keeps it)."""
    kept = ", ".join(f"{op} x{n}" for op, n in summary["kept_float32"].items()) or "none"
    return (f"{summary['dtype']}: {summary['converted_nodes']} nodes run in {summary['dtype']}, "
            f"{summary['casts']} casts, sums in {summary.get('accumulate', 'float32')}; "
            f"kept float32: {kept}; weights "
            f"{summary['weight_bytes_before']:,} -> {summary['weight_bytes_after']:,} bytes")


def half_type(name: str) -> str:
    """`fp16`/`float16` -> float16, `bf16`/`bfloat16` -> bfloat16; anything else is an error."""
    dtype = HALF_TYPES.get(name, name)
    if dtype not in HALF_TYPES.values():
        raise EdlcError(f"no half-precision type '{name}'; edlc has {', '.join(HALF_TYPES)}")
    return dtype


def convert_precision(graph: Graph, dtype: str = "float16", *,
                      op_block_list: Iterable[str] | None = None,
                      node_block_list: Iterable[str] = ()) -> tuple[Graph, PrecisionReport]:
    """Convert `graph` in place to run in `dtype` ("float16"/"fp16" or "bfloat16"/"bf16")
    where that is safe, keeping its float32 interface. `op_block_list` replaces the ops kept
    float32 by default (`KEEP_FLOAT32[dtype]`); `node_block_list` names nodes kept float32
    besides. Returns the graph and a report."""
    half = half_type(dtype)
    blocked = dict(KEEP_FLOAT32[half]) if op_block_list is None else \
        {op: "in the op block list" for op in op_block_list}
    report = PrecisionReport(half, weight_bytes_before=_weight_bytes(graph))
    _Converter(graph, half, blocked, set(node_block_list), report).run()
    report.weight_bytes_after = _weight_bytes(graph)
    return graph, report


def _weight_bytes(graph: Graph) -> int:
    return sum(v.type.nbytes or 0 for v in graph.constants() if v.type is not None)


def _op(node: Node) -> str:
    return f"edlc.{node.op}" if node.domain == "edlc" else node.op


def _is_f32(v: Value | None) -> bool:
    return v is not None and v.type is not None and v.type.dtype == "float32"


class _Converter:
    def __init__(self, graph: Graph, half: str, blocked: dict[str, str], nodes: set[str],
                 report: PrecisionReport):
        self.graph, self.half, self.blocked, self.block_nodes = graph, half, blocked, nodes
        self.report = report
        self.converted: set[int] = set()  # ids of nodes run in the half type
        self.retyped: dict[int, Value] = {}  # ids of values now half (were float32)
        self.half_of: dict[int, Value] = {}  # float32 value -> its half cast / constant
        self.f32_of: dict[int, Value] = {}  # retyped value -> its float32 cast

    def run(self) -> None:
        nested = self.graph.nested_output_ids()
        for node in list(self.graph.nodes):
            reason = self._why_not(node, nested)
            if reason is None:
                self._convert(node)
            elif any(_is_f32(v) for v in (*node.inputs, *node.outputs)) and _op(node) not in FOLLOW:
                self.report.keep(_op(node), reason)
        # readers left float32 (kept ops, subgraph nodes) read a float32 cast
        for v in list(self.retyped.values()):
            for user, i in v.uses:
                if id(user) not in self.converted and not (user.op in FOLLOW and user.domain == ""):
                    user.set_input(i, self._to_f32(v))
        self._keep_interface()

    # -- deciding ------------------------------------------------------------------------------
    def _why_not(self, node: Node, nested: set[int]) -> str | None:
        op = _op(node)
        if node.name in self.block_nodes:
            return "in the node block list"
        if op in self.blocked:
            return self.blocked[op]
        if op in FOLLOW:
            return "reads any type" if node.domain == "" else "not an ONNX op"
        if op not in COMPUTE and op not in MOVE:
            return "no half-precision rule for this op"
        if node.subgraphs and op != "edlc.fused":
            return "control flow"
        if any(id(v) in nested for v in node.outputs):
            return "a subgraph names its output"
        fixed = FIXED_INPUTS.get(op, ())
        floats = [v for i, v in enumerate(node.inputs) if i not in fixed and v is not None
                  and v.type is not None and v.type.dtype in ("float32", self.half, "float64")]
        if any(v.type.dtype == "float64" for v in floats) or \
                any(v.type is not None and v.type.dtype == "float64" for v in node.outputs):
            return "float64"
        if op in ("LayerNormalization", "BatchNormalization", "RMSNormalization") and \
                sum(1 for v in node.outputs if v.name and (v.uses or v in self.graph.outputs)) > 1:
            return "its statistics outputs are read"
        if op == "edlc.fused":
            inner = _body_blocker(node.attrs["body"], self.blocked)
            if inner is not None:
                return f"its body has {inner}"
        if op in MOVE and not any(id(v) in self.retyped or (_is_f32(v) and v.is_constant and i == 0)
                                  for i, v in enumerate(node.inputs) if v is not None):
            return "data movement on float32 values"
        if not floats:
            return "no float inputs"
        return None

    # -- rewriting -----------------------------------------------------------------------------
    def _convert(self, node: Node) -> None:
        fixed = FIXED_INPUTS.get(_op(node), ())
        for i, v in enumerate(node.inputs):
            if i not in fixed and _is_f32(v):
                node.set_input(i, self._to_half(v, node))
        for v in node.outputs:
            if _is_f32(v):
                v.type = TensorType(v.type.shape, self.half)
                self.retyped[id(v)] = v
        if _op(node) == "edlc.fused":
            _convert_body(node.attrs["body"], self.half, self.report)
        self.converted.add(id(node))
        self.report.converted += 1

    def _to_half(self, v: Value, reader: Node) -> Value:
        if id(v) in self.half_of:
            return self.half_of[id(v)]
        if v.is_constant:
            h = self.graph.constant(_half_array(v.const, self.half, self.report), f"{v.name}_{self.half}")
        else:
            cast = self.graph.add_node("Cast", [v], {"to": _ONNX_TYPE[self.half]},
                                       output_types=[TensorType(v.type.shape, self.half)],
                                       name=f"{v.name}.to_{self.half}", before=reader)
            h = cast.outputs[0]
            self.report.casts += 1
        self.half_of[id(v)] = h
        return h

    def _to_f32(self, v: Value) -> Value:
        if id(v) in self.f32_of:
            return self.f32_of[id(v)]
        nodes = self.graph.nodes
        producer = v.producer
        after = nodes[nodes.index(producer) + 1] if producer is not None and \
            nodes.index(producer) + 1 < len(nodes) else None
        cast = self.graph.add_node("Cast", [v], {"to": TensorProto.FLOAT},
                                   output_types=[TensorType(v.type.shape, "float32")],
                                   name=f"{v.name}.to_float32", before=after)
        self.report.casts += 1
        self.f32_of[id(v)] = cast.outputs[0]
        return cast.outputs[0]

    def _keep_interface(self) -> None:
        """Graph outputs stay float32 and keep their names: the cast takes the name, the half
        value a new one."""
        for k, v in enumerate(self.graph.outputs):
            if id(v) not in self.retyped:
                continue
            f = self._to_f32(v)
            name = v.name
            v.name = self.graph.unique_name(f"{name}_{self.half}")
            f.name = name
            self.graph.outputs[k] = f


def _body_blocker(body: Graph, blocked: dict[str, str]) -> str | None:
    """The first op of a fused body that cannot run in half precision, or None."""
    for n in body.all_nodes():
        op = _op(n)
        if op in blocked or (op not in COMPUTE and op not in MOVE and op not in FOLLOW):
            return op
        if any(v is not None and v.type is not None and v.type.dtype == "float64"
               for v in (*n.inputs, *n.outputs)):
            return "float64 values"
    return None


def _convert_body(body: Graph, half: str, report: PrecisionReport) -> None:
    """A fused group's body, all of it, in the half type (its inputs are half already)."""
    consts: dict[int, Value] = {}
    for v in body.inputs:
        if _is_f32(v):
            v.type = TensorType(v.type.shape, half)
    for n in body.nodes:
        fixed = FIXED_INPUTS.get(_op(n), ())
        for i, v in enumerate(n.inputs):
            if i in fixed or not _is_f32(v) or not v.is_constant:
                continue
            if id(v) not in consts:
                consts[id(v)] = body.constant(_half_array(v.const, half, report), f"{v.name}_{half}")
            n.set_input(i, consts[id(v)])
        if _op(n) in FOLLOW:
            continue
        for v in n.outputs:
            if _is_f32(v):
                v.type = TensorType(v.type.shape, half)


def _half_array(a: np.ndarray, half: str, report: PrecisionReport) -> np.ndarray:
    """Round to the half type; float16 clips finite values beyond its range instead of making
    them inf."""
    if half == "float16":
        over = np.isfinite(a) & (np.abs(a) > FLOAT16_MAX)
        if over.any():
            report.clipped += int(over.sum())
            a = np.where(over, np.sign(a) * FLOAT16_MAX, a)
    return np.ascontiguousarray(a.astype(numpy_dtype(half)))


@register_pass("float16", "run float32 weights and activations in float16 where safe (casts at the "
               "model's inputs and outputs; range-sensitive ops stay float32); --quantize fp16")
def float16(graph: Graph) -> PassResult:
    graph, report = convert_precision(graph, "float16")
    return PassResult(graph, report.converted > 0, report.lines())


@register_pass("bfloat16", "run float32 weights and activations in bfloat16 (casts at the model's "
               "inputs and outputs); --quantize bf16")
def bfloat16(graph: Graph) -> PassResult:
    graph, report = convert_precision(graph, "bfloat16")
    return PassResult(graph, report.converted > 0, report.lines())




def pipeline_with(pipeline: Sequence[str | PassInfo], dtype: str,
                  options: Mapping[str, Any] | None = None, disabled: Iterable[str] = ()
                  ) -> tuple[list[str | PassInfo], list[PrecisionReport]]:
    """`pipeline` with the conversion to `dtype` in it, `options` (convert_precision's
    keywords) bound, and the list its report will be appended to. It goes where a pipeline
    names it, else before `fuse` (after folding and recognizing, so BatchNorm folds into
    float32 weights that are rounded once, and LayerNorm is one op), else before
    `eliminate-dead-code`, else last."""
    half = half_type(dtype)
    if half in set(disabled):
        raise EdlcError(f"quantize='{dtype}' runs the pass '{half}', which the disabled passes "
                         "name; enable it or drop the quantize option")
    options = dict(options or {})
    unknown = sorted(set(options) - {"op_block_list", "node_block_list"})
    if unknown:
        raise EdlcError(f"quantize='{dtype}' takes the options op_block_list and node_block_list, "
                         f"not {', '.join(unknown)}")
    reports: list[PrecisionReport] = []

    def run(graph: Graph) -> PassResult:
        graph, report = convert_precision(graph, half, **options)
        reports.append(report)
        return PassResult(graph, report.converted > 0, report.lines())

    info = PassInfo(half, run, get_pass(half).description, 99)
    names = [p.name if isinstance(p, PassInfo) else p for p in pipeline]
    out: list[str | PassInfo] = list(pipeline)
    if half in names:
        out[names.index(half)] = info
    else:
        at = next((names.index(n) for n in ("fuse", "eliminate-dead-code") if n in names), len(out))
        out.insert(at, info)
    return out, reports


__all__ = ["COMPUTE", "FOLLOW", "HALF_TYPES", "KEEP_FLOAT32", "MOVE", "PrecisionReport",
           "convert_precision", "format_summary", "half_type", "pipeline_with"]
