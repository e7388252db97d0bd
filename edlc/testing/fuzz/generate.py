"""Random ONNX graphs built with `onnx.helper`: valid by construction (shapes are tracked here,
so each op gets attributes and inputs that fit), with the variety that finds bugs in passes and
lowering: broadcasting, negative axes, zero-sized and symbolic dims, scalars, mixed dtypes,
constants as initializers or Constant nodes, If subgraphs, ops with several outputs.

Feed the result to `mutate_model` to make it invalid in a targeted way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = tuple[int, ...]
OPSET = 17
UNARY = ["Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Neg", "Erf", "Softplus", "Identity", "Floor",
         "Sin", "Softsign", "HardSwish", "LeakyRelu", "Elu", "HardSigmoid", "Selu", "Sqrt", "Log",
         "Reciprocal", "Ceil", "Round", "Sign", "Dropout"]
BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean"]
ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL,
        "float16": TensorProto.FLOAT16, "int32": TensorProto.INT32, "float64": TensorProto.DOUBLE}


@dataclass
class Val:
    name: str
    shape: Shape
    dtype: str = "float32"


@dataclass
class RandomGraph:
    """A generated model and the concrete shapes its symbolic inputs stand for."""

    model: onnx.ModelProto
    input_shapes: dict[str, Shape]
    log: list[str] = field(default_factory=list)


class _Builder:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.values: list[Val] = []
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def pick(self, dtype: str = "float32", min_rank: int = 0, max_rank: int = 8) -> Val | None:
        ok = [v for v in self.values if v.dtype == dtype and min_rank <= len(v.shape) <= max_rank]
        if not ok:
            return None
        # prefer recent values: longer chains
        return ok[-1] if self.rng.random() < 0.5 else self.rng.choice(ok)

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        if self.rng.random() < 0.3:
            self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                               value=numpy_helper.from_array(array, name)))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def weights(self, shape: Shape, hint: str = "w") -> str:
        data = np.asarray(np.random.default_rng(self.rng.randrange(2**31)).standard_normal(shape),
                          np.float32)
        return self.const(data * np.float32(0.5), hint)

    def add(self, op: str, inputs: list[str], outs: list[tuple[Shape, str]], **attrs) -> list[Val]:
        name = self.name(op.lower())
        vals = [Val(f"{name}_o{i}" if len(outs) > 1 else name, tuple(s), d)
                for i, (s, d) in enumerate(outs)]
        self.nodes.append(helper.make_node(op, inputs, [v.name for v in vals], name=name, **attrs))
        self.values.extend(vals)
        return vals


def _broadcast(a: Shape, b: Shape) -> Shape:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def _broadcastable(rng: random.Random, shape: Shape) -> Shape:
    """A shape that broadcasts against `shape`: a suffix with some dims set to 1."""
    tail = shape[rng.randrange(len(shape) + 1):] if shape else ()
    return tuple(1 if rng.random() < 0.3 else d for d in tail)


def _conv_out(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


# ---- op generators: each adds one node (or a few) if a fitting input exists ---------------------
def g_unary(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    op = b.rng.choice(UNARY)
    b.add(op, [x.name], [(x.shape, x.dtype)])
    return True


def g_binary(b: _Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    others = [v for v in b.values if v.dtype == "float32" and v is not x]
    y = b.rng.choice(others) if others and b.rng.random() < 0.3 else None
    if y is None or any(p != q and 1 not in (p, q) for p, q in zip(x.shape[::-1], y.shape[::-1])):
        shape = _broadcastable(b.rng, x.shape) if b.rng.random() < 0.8 else ()
        y = Val(b.weights(shape) if shape or b.rng.random() < 0.5 else b.const(np.float32(2.0)), shape)
    op = b.rng.choice(BINARY)
    ins = [x.name, y.name] if b.rng.random() < 0.7 else [y.name, x.name]
    b.add(op, ins, [(_broadcast(x.shape, y.shape), "float32")])
    return True


def g_matmul(b: _Builder) -> bool:
    x = b.pick(min_rank=1)
    if x is None:
        return False
    n = b.rng.choice([1, 3, 4, 8])
    if b.rng.random() < 0.5 and len(x.shape) == 2:
        w = b.weights((n, x.shape[1]))
        bias = b.weights((n,)) if b.rng.random() < 0.7 else None
        b.add("Gemm", [x.name, w] + ([bias] if bias else []), [((x.shape[0], n), "float32")],
              transB=1, alpha=b.rng.choice([1.0, 0.5]))
        return True
    w = b.weights((x.shape[-1], n))
    b.add("MatMul", [x.name, w], [(x.shape[:-1] + (n,), "float32")])
    return True


def g_conv(b: _Builder) -> bool:
    x = b.pick(min_rank=4, max_rank=4)
    if x is None or min(x.shape) == 0:
        return False
    n, c, h, w = x.shape
    rng = b.rng
    group = rng.choice([g for g in (1, 2, c) if c % g == 0])
    out_c = group * rng.choice([1, 2])
    k = rng.choice([1, 3])
    stride, dil = rng.choice([1, 2]), rng.choice([1, 1, 2])
    pad = rng.choice([0, 1])
    oh, ow = (_conv_out(s, k, stride, pad, dil) for s in (h, w))
    if oh < 1 or ow < 1:
        return False
    op = rng.choice(["Conv", "Conv", "MaxPool", "AveragePool"])
    if op == "Conv":
        ins = [x.name, b.weights((out_c, c // group, k, k))]
        if rng.random() < 0.6:
            ins.append(b.weights((out_c,)))
        b.add("Conv", ins, [((n, out_c, oh, ow), "float32")], kernel_shape=[k, k],
              strides=[stride] * 2, pads=[pad] * 4, dilations=[dil] * 2, group=group)
    else:
        pad = min(pad, k // 2)
        oh, ow = (_conv_out(s, k, stride, pad, 1) for s in (h, w))
        b.add(op, [x.name], [((n, c, oh, ow), "float32")], kernel_shape=[k, k],
              strides=[stride] * 2, pads=[pad] * 4)
    return True


def g_norm(b: _Builder) -> bool:
    x = b.pick(min_rank=2)
    if x is None:
        return False
    rng = b.rng
    kind = rng.randrange(3)
    if kind == 0:
        c = x.shape[1]
        ins = [x.name, b.weights((c,)), b.weights((c,)), b.weights((c,)),
               b.const(np.abs(np.linspace(0.5, 1.5, c, dtype=np.float32)))]
        b.add("BatchNormalization", ins, [(x.shape, "float32")], epsilon=1e-5)
    elif kind == 1:
        b.add("LayerNormalization", [x.name, b.weights(x.shape[-1:]), b.weights(x.shape[-1:])],
              [(x.shape, "float32")], axis=-1)
    else:
        if len(x.shape) <= 2 or min(x.shape) == 0:
            return False
        b.add("GlobalAveragePool", [x.name], [(x.shape[:2] + (1,) * (len(x.shape) - 2), "float32")])
    return True


def g_layout(b: _Builder) -> bool:
    """Transpose, Reshape, Flatten, Unsqueeze, Squeeze."""
    x = b.pick()
    if x is None:
        return False
    rng, r = b.rng, len(x.shape)
    kind = rng.randrange(5)
    if kind == 0 and r >= 2:
        perm = list(range(r))
        rng.shuffle(perm)
        b.add("Transpose", [x.name], [(tuple(x.shape[p] for p in perm), x.dtype)], perm=perm)
    elif kind == 1:
        size = math.prod(x.shape)
        target = rng.choice([[-1], [size], [1, -1] if size else [1, size], [0] * r if r else [1]])
        out = tuple(x.shape[i] if d == 0 and i < r else d for i, d in enumerate(target))
        if -1 in out:
            rest = math.prod(d for d in out if d != -1)
            if rest == 0:
                return False
            out = tuple(size // rest if d == -1 else d for d in out)
        b.add("Reshape", [x.name, b.const(np.array(target, np.int64), "shape")], [(out, x.dtype)])
    elif kind == 2:
        axis = rng.randint(-r, r) if r else 0
        a = axis + r if axis < 0 else axis
        out = (math.prod(x.shape[:a]), math.prod(x.shape[a:]))
        b.add("Flatten", [x.name], [(out, x.dtype)], axis=axis)
    elif kind == 3 and r < 6:
        axis = rng.randint(-(r + 1), r)
        a = axis % (r + 1)
        b.add("Unsqueeze", [x.name, b.const(np.array([axis], np.int64), "axes")],
              [(x.shape[:a] + (1,) + x.shape[a:], x.dtype)])
    else:
        ones = [i for i, d in enumerate(x.shape) if d == 1]
        if not ones:
            return False
        i = rng.choice(ones)
        b.add("Squeeze", [x.name, b.const(np.array([i - r if rng.random() < 0.5 else i], np.int64), "axes")],
              [(x.shape[:i] + x.shape[i + 1:], x.dtype)])
    return True


def g_slicing(b: _Builder) -> bool:
    """Concat, Split, Slice, Gather, Pad, Tile, Expand."""
    x = b.pick(min_rank=1)
    if x is None:
        return False
    rng, r = b.rng, len(x.shape)
    axis = rng.randrange(r)
    neg = axis - r if rng.random() < 0.3 else axis
    d = x.shape[axis]
    kind = rng.randrange(7)
    if kind == 0:
        out = list(x.shape)
        out[axis] *= 2
        b.add("Concat", [x.name, x.name], [(tuple(out), x.dtype)], axis=neg)
    elif kind == 1 and d >= 2:
        first = rng.randint(1, d - 1)
        s1, s2 = list(x.shape), list(x.shape)
        s1[axis], s2[axis] = first, d - first
        b.add("Split", [x.name, b.const(np.array([first, d - first], np.int64), "split")],
              [(tuple(s1), x.dtype), (tuple(s2), x.dtype)], axis=neg)
    elif kind == 2:
        step = rng.choice([1, 1, 2, -1])
        start, end = (0, d) if step > 0 else (d - 1, -d - 1)
        n = len(range(*slice(start, end, step).indices(d)))
        out = list(x.shape)
        out[axis] = n
        ins = [x.name] + [b.const(np.array([v], np.int64), k)
                          for v, k in ((start, "st"), (end, "en"), (neg, "ax"), (step, "sp"))]
        b.add("Slice", ins, [(tuple(out), x.dtype)])
    elif kind == 3 and d >= 1:
        idx = np.array([rng.randrange(-d, d) for _ in range(rng.randint(1, 3))], np.int64)
        if rng.random() < 0.3:
            idx = np.array(int(idx[0]), np.int64)
        out = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
        b.add("Gather", [x.name, b.const(idx, "idx")], [(out, x.dtype)], axis=neg)
    elif kind == 4 and x.dtype == "float32":
        pads = [rng.randint(0, 2) for _ in range(2 * r)]
        mode = rng.choice(["constant", "edge", "reflect"]) if min(x.shape) > 2 else "constant"
        out = tuple(s + pads[i] + pads[i + r] for i, s in enumerate(x.shape))
        b.add("Pad", [x.name, b.const(np.array(pads, np.int64), "pads")], [(out, x.dtype)], mode=mode)
    elif kind == 5:
        reps = [rng.choice([1, 2]) for _ in range(r)]
        b.add("Tile", [x.name, b.const(np.array(reps, np.int64), "reps")],
              [(tuple(s * k for s, k in zip(x.shape, reps)), x.dtype)])
    else:
        target = tuple(rng.choice([2, 3]) if s == 1 else s for s in x.shape)
        if rng.random() < 0.3:
            target = (2,) + target
        b.add("Expand", [x.name, b.const(np.array(target, np.int64), "shape")], [(target, x.dtype)])
    return True


def g_reduce(b: _Builder) -> bool:
    """Reductions, Softmax, ArgMax, TopK, CumSum."""
    x = b.pick(min_rank=1)
    if x is None:
        return False
    rng, r = b.rng, len(x.shape)
    axis = rng.randrange(r)
    neg = axis - r if rng.random() < 0.3 else axis
    keep = rng.choice([0, 1])
    reduced = tuple(1 if i == axis else s for i, s in enumerate(x.shape)) if keep else \
        x.shape[:axis] + x.shape[axis + 1:]
    kind = rng.randrange(6)
    if kind == 0:
        b.add("ReduceSum", [x.name, b.const(np.array([neg], np.int64), "axes")],
              [(reduced, "float32")], keepdims=keep)
    elif kind == 1 and x.shape[axis] > 0:
        b.add(rng.choice(["ReduceMean", "ReduceMax", "ReduceL2"]), [x.name], [(reduced, "float32")],
              axes=[neg], keepdims=keep)
    elif kind == 2:
        b.add(rng.choice(["Softmax", "LogSoftmax"]), [x.name], [(x.shape, "float32")], axis=neg)
    elif kind == 3 and x.shape[axis] > 0:
        b.add("ArgMax", [x.name], [(reduced, "int64")], axis=neg, keepdims=keep)
    elif kind == 4 and x.shape[axis] > 0:
        k = rng.randint(1, x.shape[axis])
        out = tuple(k if i == axis else s for i, s in enumerate(x.shape))
        b.add("TopK", [x.name, b.const(np.array([k], np.int64), "k")],
              [(out, "float32"), (out, "int64")], axis=neg)
    else:
        b.add("CumSum", [x.name, b.const(np.array(neg, np.int64), "axis")], [(x.shape, "float32")])
    return True


def g_types(b: _Builder) -> bool:
    """Cast, Shape, ConstantOfShape, comparisons, Where, Clip, Range."""
    x = b.pick()
    if x is None:
        return False
    rng = b.rng
    kind = rng.randrange(6)
    if kind == 0:
        to = rng.choice(["int64", "bool", "float16", "float64", "int32"])
        (c,) = b.add("Cast", [x.name], [(x.shape, to)], to=ELEM[to])
        b.add("Cast", [c.name], [(x.shape, "float32")], to=TensorProto.FLOAT)
    elif kind == 1:
        (s,) = b.add("Shape", [x.name], [((len(x.shape),), "int64")])
        b.add("ConstantOfShape", [s.name], [(x.shape, "float32")],
              value=numpy_helper.from_array(np.array([rng.choice([0.0, 1.5])], np.float32)))
    elif kind == 2:
        (p,) = b.add(rng.choice(["Greater", "Less", "Equal"]), [x.name, b.const(np.float32(0.0))],
                     [(x.shape, "bool")])
        b.add("Where", [p.name, x.name, b.weights(_broadcastable(rng, x.shape))], [(x.shape, "float32")])
    elif kind == 3:
        lo, hi = sorted(rng.choice([-1.0, 0.0, 0.5, 6.0]) for _ in range(2))
        ins = [x.name, b.const(np.float32(lo))] + ([b.const(np.float32(hi))] if rng.random() < 0.7 else [])
        b.add("Clip", ins, [(x.shape, "float32")])
    elif kind == 4:
        n = rng.randint(0, 6)
        ins = [b.const(np.float32(v)) for v in (0.0, n * 0.5, 0.5)]
        b.add("Range", ins, [((n,), "float32")])
    else:
        b.add("Trilu" if len(x.shape) >= 2 else "Identity", [x.name], [(x.shape, "float32")],
              **({"upper": rng.choice([0, 1])} if len(x.shape) >= 2 else {}))
    return True


def g_if(b: _Builder) -> bool:
    """If whose branches read an outer value (captured): subgraph import and passes."""
    x = b.pick()
    if x is None:
        return False
    rng = b.rng
    if rng.random() < 0.5:
        cond = b.const(np.array(rng.random() < 0.5))
    else:
        (s,) = b.add("ReduceSum", [x.name], [((), "float32")], keepdims=0)
        (cond_v,) = b.add("Greater", [s.name, b.const(np.float32(0.0))], [((), "bool")])
        cond = cond_v.name
    out = helper.make_tensor_value_info(b.name("branch_out"), TensorProto.FLOAT, list(x.shape))

    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, [x.name], [out.name], name=b.name(op))],
                                 b.name("branch"), [], [out])

    b.add("If", [cond], [(x.shape, "float32")], then_branch=branch(rng.choice(UNARY[:8])),
          else_branch=branch(rng.choice(UNARY[:8])))
    return True


GENERATORS: list[Callable[[_Builder], bool]] = [
    g_unary, g_unary, g_binary, g_binary, g_matmul, g_conv, g_norm, g_layout, g_slicing,
    g_reduce, g_types, g_if,
]


def random_graph(rng: random.Random, max_nodes: int = 10, empty_dims: bool = True) -> RandomGraph:
    """A valid random model of up to `max_nodes` generator steps; with `empty_dims`, inputs
    sometimes have a zero-sized dim."""
    b = _Builder(rng)
    inputs, bindings = [], {}
    for i in range(rng.choice([1, 1, 2])):
        rank = rng.choice([0, 1, 2, 3, 4, 4])
        shape = tuple(0 if empty_dims and rng.random() < 0.03 else rng.choice([1, 2, 3, 4, 5, 8])
                      for _ in range(rank))
        name = f"in{i}"
        declared = [f"d{i}_{j}" if rng.random() < 0.2 else s for j, s in enumerate(shape)]
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, declared))
        if any(isinstance(d, str) for d in declared):
            bindings[name] = shape
        b.values.append(Val(name, shape))
    log = []
    for _ in range(rng.randint(1, max_nodes)):
        gen = rng.choice(GENERATORS)
        if gen(b):
            log.append(gen.__name__)
    made = [v for v in b.values if v.name not in {i.name for i in inputs}] or b.values[:1]
    chosen = [made[-1]] + ([rng.choice(made[:-1])] if len(made) > 1 and rng.random() < 0.3 else [])
    outputs = [helper.make_tensor_value_info(v.name, ELEM[v.dtype], list(v.shape)) for v in chosen]
    if any(o.name in {i.name for i in inputs} for o in outputs):  # an input as output: Identity
        b.nodes.append(helper.make_node("Identity", [chosen[0].name], ["out"], name="out"))
        outputs = [helper.make_tensor_value_info("out", ELEM[chosen[0].dtype], list(chosen[0].shape))]
    graph = helper.make_graph(b.nodes, "random", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return RandomGraph(model, bindings, log)
