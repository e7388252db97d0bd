"""Tutorial: write your own graph pass.

Many networks compute SiLU (also called Swish) as two ONNX nodes, `x * Sigmoid(x)`. This
tutorial teaches edlc to fuse that pair into one op, `edlc.SiLU`, end to end:

  1. build a small ONNX model with SiLU written out as Sigmoid + Mul;
  2. declare the new op: its shape rule and numpy reference (`edlc.ir.ops.register_op`) and
     how it becomes TVM Relax (`edlc.lower.register_lowering`);
  3. write the pass with the pattern rewriter (`edlc.rewrite`) and register it by name
     (`@register_pass("fuse-silu", ...)`);
  4. run it from Python: node counts before -> after, the pass's "why not fused" report, and the
     compiled model's outputs against onnxruntime;
  5. run the same pass from the command line with `--pass-plugin`, which loads this file.

Run it from anywhere (it writes its files into the current directory):

    python tutorials/custom_pass.py

It exits non-zero if the fusion does not happen or edlc's outputs disagree with onnxruntime's.

The op, the lowering and the pass are defined at the top level, so that importing this file
registers them; the walk-through itself runs only under `if __name__ == "__main__"`. That is
what lets the CLI use this very file as a plugin:

    edlc compile silu_mlp.onnx --pass-plugin tutorials/custom_pass.py:fuse_silu -o silu_mlp.edlc
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edlc.ir.graph import Graph, Node
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType
from edlc.lower import LowerContext, register_lowering
from edlc.pass_manager import PassResult, register_pass
from edlc.rewrite import Match, Rule, apply_rules, op, var

# =================================================================================================
# Step 2: the new op, edlc.SiLU (domain "edlc", op "SiLU").
#
# An op edlc's passes create needs three things, all keyed by (op, domain):
#   - a shape/type rule: output types from the node's input types (for SiLU: same as the input);
#   - a numpy reference: used by constant folding (a SiLU of a constant is folded away) and as
#     the ground truth in tests;
#   - a lowering rule: how the node becomes TVM Relax. `ctx.bb` is the Relax BlockBuilder;
#     `inputs` are the Relax expressions of the node's inputs; `ctx.emit` binds a new one.
# =================================================================================================


def silu_type(node: Node) -> list[TensorType]:
    return [node.inputs[0].type]


def silu_reference(node: Node, inputs: list[np.ndarray]) -> list[np.ndarray]:
    x = inputs[0]
    return [(x / (1 + np.exp(-x))).astype(x.dtype)]


register_op("SiLU", "edlc", infer=silu_type, reference=silu_reference, doc="x * sigmoid(x)")


@register_lowering("SiLU", "edlc")
def lower_silu(ctx: LowerContext, node: Node, inputs: list):
    from tvm import relax  # TVM is imported only when edlc lowers a model

    return ctx.emit(relax.op.nn.silu(inputs[0]))


# =================================================================================================
# Step 3: the pass.
#
# A rewrite rule has three parts:
#   pattern - what to find: a Mul whose inputs are some value x and Sigmoid(x). Using the same
#             var twice means "the same value". Mul is commutative, so the rewriter also
#             matches Mul(Sigmoid(x), x); you write one pattern for both orders.
#   check   - may the match be rewritten? None accepts; a string rejects and says why. The
#             rewriter itself already rejects matches whose inner nodes (here the Sigmoid) are
#             read outside the match: the Sigmoid must stay for those readers.
#   rewrite - build the replacement with the Builder `b` (new nodes go just before the Mul); the
#             returned value replaces the Mul's output everywhere, and the matched nodes that
#             became dead are removed.
# =================================================================================================

FLOAT_TYPES = ("float16", "bfloat16", "float32", "float64")


def silu_check(m: Match) -> str | None:
    dtype = m["x"].type.dtype if m["x"].type is not None else None
    return None if dtype in FLOAT_TYPES else f"SiLU needs a float tensor, '{m['x'].name}' is {dtype}"


x = var("x")
SILU_RULE = Rule(
    "fuse-silu",
    pattern=op("Mul", x, op("Sigmoid", x)),
    check=silu_check,
    rewrite=lambda b, m: b.op("edlc.SiLU", [m["x"]]),
)


# A pass is a function Graph -> PassResult(graph, modified, report). It works in place; the
# report lines (here: every match the rule refused, with the reason) are what
# `edlc inspect --passes` prints under the pass's name. register_pass names it for
# `--passes`, `--disable-pass`, `--print-ir-after` and `edlc passes`. Without
# `min_opt_level` it joins no -O pipeline: it runs when asked for by name.
@register_pass("fuse-silu", "fuse x * sigmoid(x) into one edlc.SiLU op")
def fuse_silu(graph: Graph) -> PassResult:
    stats = apply_rules(graph, [SILU_RULE])
    return PassResult(graph, stats.modified, stats.report())


# =================================================================================================
# The walk-through: steps 1, 4 and 5.
# =================================================================================================


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def build_model() -> onnx.ModelProto:
    """Step 1: three dense layers, each followed by SiLU written as Sigmoid + Mul.

        h1 = x  @ W1 + b1;  a1 = h1 * Sigmoid(h1)      Mul(x, Sigmoid(x))
        h2 = a1 @ W2 + b2;  a2 = Sigmoid(h2) * h2      the other input order
        h3 = a2 @ W3 + b3;  gate = Sigmoid(h3)         gate is also a model output, so the
                            y = h3 * gate              Sigmoid must stay: not fused, and the
                                                       pass's report says why
    """
    rng = np.random.default_rng(0)
    sizes = [16, 32, 32, 8]
    inits, nodes = [], []
    for i in range(3):
        w = (rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i + 1}"),
                  numpy_helper.from_array(rng.standard_normal(sizes[i + 1]).astype(np.float32), f"b{i + 1}")]
    src = "x"
    for i in (1, 2, 3):
        nodes += [helper.make_node("MatMul", [src, f"W{i}"], [f"m{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i}"], name=f"add{i}")]
        gate = "gate" if i == 3 else f"s{i}"
        nodes.append(helper.make_node("Sigmoid", [f"h{i}"], [gate], name=f"sigmoid{i}"))
        mul_inputs = [gate, f"h{i}"] if i == 2 else [f"h{i}", gate]
        src = "y" if i == 3 else f"a{i}"
        nodes.append(helper.make_node("Mul", mul_inputs, [src], name=f"mul{i}"))
    graph = helper.make_graph(
        nodes, "silu_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8]),
         helper.make_tensor_value_info("gate", TensorProto.FLOAT, [4, 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnxruntime_outputs(model_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))


def compare(what: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, ref in want.items():
        if name not in got:
            fail(f"{what}: output '{name}' is missing (got {list(got)})")
        err = float(np.max(np.abs(got[name] - ref)))
        print(f"  {name}: max |edlc - onnxruntime| = {err:.2e}")
        if got[name].shape != ref.shape or not np.allclose(got[name], ref, rtol=1e-4, atol=1e-5):
            fail(f"{what}: output '{name}' differs from onnxruntime (max abs error {err:.3g})")


def edlc_cli(*args: str) -> str:
    """Run `edlc ARGS...` (as `python -m edlc.cli`, so it works without the console script on
    PATH), echo its output and stop the tutorial if it fails."""
    print(f"$ edlc {' '.join(args)}")
    r = subprocess.run([sys.executable, "-m", "edlc.cli", *args], capture_output=True, text=True)
    print("\n".join("  " + line for line in (r.stdout + r.stderr).rstrip().splitlines()))
    if r.returncode != 0:
        fail(f"`edlc {' '.join(args)}` exited with {r.returncode}")
    return r.stdout


def main() -> None:
    import edlc
    from edlc.pass_manager import PassManager, default_pipeline

    workdir = Path.cwd()
    model_path = workdir / "silu_mlp.onnx"
    onnx.save(build_model(), model_path)
    x_in = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    reference = onnxruntime_outputs(model_path, {"x": x_in})

    # ---- Step 4a: run the pass on the graph and look at the result ---------------------------
    graph = edlc.load_onnx(model_path)
    print(f"before: {len(graph.nodes)} nodes {graph.op_histogram()}")
    pm = PassManager(["fold-constants", "fuse-silu", "eliminate-dead-code"])
    graph = pm.run(graph)
    print(f"after:  {len(graph.nodes)} nodes {graph.op_histogram()}")
    print(pm.timing_report())
    fused = sum(1 for n in graph.nodes if (n.domain, n.op) == ("edlc", "SiLU"))
    report = [line for r in pm.records if r.name == "fuse-silu" for line in r.report]
    print("fuse-silu's report (the matches it refused, and why):")
    print("\n".join(f"  {line}" for line in report) or "  (none)")
    if fused != 2 or len(report) != 1:
        fail(f"expected 2 fused SiLUs and 1 refusal (the Sigmoid read by the model output "
             f"'gate'), got {fused} and {report}")
    print(graph)  # the text form: look for the edlc::SiLU nodes

    # ---- Step 4b: compile with the pass in the pipeline and compare with onnxruntime ---------
    # The -O2 pipeline with fuse-silu placed right after constant folding, before the built-in
    # fusions get to see the Sigmoid and the Mul.
    pipeline = default_pipeline(2)
    pipeline.insert(pipeline.index("fold-constants") + 1, "fuse-silu")
    print(f"compiling with passes {pipeline}")
    module = edlc.compile(model_path, target="x86", passes=pipeline)
    compare("edlc.compile", module.run({"x": x_in}), reference)

    # ---- Step 5: the same from the command line ----------------------------------------------
    # --pass-plugin MODULE:FUNCTION loads the pass. MODULE is an importable module name or a
    # path to a .py file (this one); FUNCTION is either a pass registered with @register_pass
    # when the module is imported (as fuse_silu is, so its registered name "fuse-silu" is used)
    # or a plain function Graph -> PassResult (registered under its kebab-case name).
    #
    #   edlc passes --pass-plugin tutorials/custom_pass.py:fuse_silu
    #   edlc inspect silu_mlp.onnx --pass-plugin tutorials/custom_pass.py:fuse_silu \
    #        --passes fold-constants,fuse-silu,eliminate-dead-code
    #   edlc compile silu_mlp.onnx --pass-plugin tutorials/custom_pass.py:fuse_silu \
    #        --passes fold-constants,fuse-silu,... --time-passes -o silu_mlp.edlc
    #   edlc run silu_mlp.edlc --inputs x.npz --output y.npz
    #
    # A plugin pass runs after the -O pipeline unless --passes names it, as here, where it
    # runs where it is named.
    plugin = f"{Path(__file__).resolve()}:fuse_silu"
    listing = edlc_cli("passes", "--pass-plugin", plugin)
    if "fuse-silu" not in listing:
        fail("`edlc passes` does not list the plugin's pass")
    shown = edlc_cli("inspect", str(model_path), "--pass-plugin", plugin,
                     "--passes", "fold-constants,fuse-silu,eliminate-dead-code")
    if "edlc::SiLU" not in shown:
        fail("`edlc inspect --passes` shows no edlc::SiLU node")
    artifact = workdir / "silu_mlp.edlc"
    edlc_cli("compile", str(model_path), "--pass-plugin", plugin, "--passes", ",".join(pipeline),
             "--time-passes", "--print-ir-after", "fuse-silu", "-o", str(artifact))
    np.savez(workdir / "x.npz", x=x_in)
    edlc_cli("run", str(artifact), "--inputs", str(workdir / "x.npz"), "--output", str(workdir / "y.npz"))
    with np.load(workdir / "y.npz") as z:
        compare("edlc run", {k: z[k] for k in z.files}, reference)
    print("OK: fuse-silu fused 2 of 3 SiLUs; edlc's outputs match onnxruntime's")


if __name__ == "__main__":
    main()
