"""NHWC between int8 convs: their activations keep channels innermost, the layout their kernels
compute in (an accumulator tile is a row of pixels times a block of 16 output channels).

    before: %a = edlc.qconv2d(%x)            [NCHW]   %p = edlc.qmaxpool(%a)   %b = edlc.qconv2d(%p)
    after:  %a = edlc.qconv2d[out NHWC](%x)  %p = edlc.qmaxpool[NHWC](%a)  %b = edlc.qconv2d[in, out NHWC](%p)

The epilogue then writes whole channel blocks of a pixel (16 bytes) instead of one byte in
each of 16 channel planes, and the next conv reads its quads of channels where they lie,
padding only the borders. Where such a value meets an op that is not an int8 conv or pool
(Flatten, GlobalAveragePool, a graph output) a Transpose back to NCHW is inserted; a value from
outside that a converted conv adds in its epilogue is transposed to NHWC. The first conv keeps
its NCHW input (the quantized model input).

It runs as the `int8-layout` pass when a model is compiled (-O1 and up), not in the quantizer:
the quantized graph and its QDQ export stay NCHW, as ONNX and onnxruntime expect. Convs with groups (depthwise) are left alone, and
so is a graph that has any: a region of NHWC convs around NCHW depthwise ones would transpose
at every step.
"""

from __future__ import annotations

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import infer_types
from edlc.ir.types import TensorType
from edlc.pass_manager import PassResult, register_pass
from edlc.passes.quantize.ops import EXTRA, NCHW_TO_NHWC, NHWC_TO_NCHW, X, int32_output

NHWC = "NHWC"


def _qconv(n: Node | None) -> bool:
    return n is not None and n.domain == "edlc" and n.op == "qconv2d"


def _qpool(n: Node | None) -> bool:
    return n is not None and n.domain == "edlc" and n.op == "qmaxpool"


def _static4(v: Value | None) -> bool:
    return v is not None and v.type is not None and v.type.is_static and v.type.rank == 4


def _convertible(n: Node) -> bool:
    if _qpool(n):
        return n.attrs.get("layout", "NCHW") == "NCHW" and _static4(n.inputs[0])
    if not _qconv(n) or int(n.attrs.get("group", 1)) != 1 or not _static4(n.inputs[X]) or int32_output(n) or \
            n.attrs.get("in_layout", "NCHW") != "NCHW" or n.attrs.get("out_layout", "NCHW") != "NCHW":
        return False
    body: Graph | None = n.attrs.get("epilogue")
    # per-channel constants in the epilogue, and extra inputs of a lower rank, broadcast the
    # NCHW way: keep such an op as it is (rank-4 extras are transposed with it)
    extras = [v for v in n.inputs[EXTRA:] if v is not None]
    return (body is None or all(c.const.size == 1 for c in body.constants())) and \
        all(_static4(v) or (v.type is not None and v.type.is_static and v.type.numel == 1) for v in extras)


def _nhwc(t: TensorType) -> TensorType:
    return TensorType(tuple(t.shape[i] for i in NCHW_TO_NHWC), t.dtype)


def _transpose(graph: Graph, v: Value, perm, before: Node, name: str) -> Value:
    t = TensorType(tuple(v.type.shape[i] for i in perm), v.type.dtype)
    return graph.add_node("Transpose", [v], {"perm": list(perm)}, name=name, before=before,
                          output_types=[t]).outputs[0]


def nhwc_int8(graph: Graph) -> bool:
    """Run the graph's int8 convs and max pools on NHWC activations (see the module doc)."""
    convs = [n for n in graph.nodes if _qconv(n)]
    if not convs or any(int(n.attrs.get("group", 1)) != 1 for n in convs):
        return False
    chosen = {id(n) for n in graph.nodes if _convertible(n)}
    changed = True
    while changed:  # a pool converts only with its producer
        changed = False
        for n in graph.nodes:
            if id(n) in chosen and _qpool(n) and id(n.inputs[0].producer) not in chosen:
                chosen.discard(id(n))
                changed = True
    if not any(_qconv(n) for n in graph.nodes if id(n) in chosen):
        return False
    for n in list(graph.nodes):
        if id(n) not in chosen:
            continue
        if _qconv(n):
            if id(n.inputs[X].producer) in chosen:
                n.attrs["in_layout"] = NHWC
            n.attrs["out_layout"] = NHWC
            for i in range(EXTRA, len(n.inputs)):
                v = n.inputs[i]
                if v is not None and id(v.producer) not in chosen and _static4(v):
                    n.set_input(i, _transpose(graph, v, NCHW_TO_NHWC, n, f"{n.name}.extra{i - EXTRA}.nhwc"))
            body = n.attrs.get("epilogue")
            if body is not None:
                for bv in body.values():
                    if not bv.is_constant and _static4(bv):
                        bv.type = _nhwc(bv.type)
        else:
            n.attrs["layout"] = NHWC
        out = n.outputs[0]
        (out.type,) = infer_types(n, graph.opset)
        _back_to_nchw(graph, n, chosen)
    return True


def _back_to_nchw(graph: Graph, n: Node, chosen: set) -> None:
    """Readers of n's NHWC output that are not converted read it through a Transpose."""
    out = n.outputs[0]
    outside = [(u, i) for u, i in out.uses if id(u) not in chosen]
    is_output = out in graph.outputs
    if not outside and not is_output:
        return
    after = _next(graph, n)
    back = _transpose(graph, out, NHWC_TO_NCHW, after, f"{n.name}.nchw")
    for u, i in outside:
        u.set_input(i, back)
    if is_output:
        out.name, back.name = back.name, out.name
        graph.outputs = [back if v is out else v for v in graph.outputs]


def _next(graph: Graph, n: Node) -> Node | None:
    nodes = graph.nodes
    i = nodes.index(n)
    return nodes[i + 1] if i + 1 < len(nodes) else None


@register_pass("int8-layout", "run int8 convs and max pools on NHWC activations (channels innermost, "
               "as their kernels compute); transposes where other ops read them", min_opt_level=1)
def int8_layout(graph: Graph) -> PassResult:
    return PassResult(graph, nhwc_int8(graph))


__all__ = ["int8_layout", "nhwc_int8"]
