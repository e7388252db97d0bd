"""The `edlc` command.

    edlc compile MODEL --target x86 [--input-shape x=1x3x224x224]... [-O N] -o OUT
    edlc run OUT [--inputs in.npz] [--output out.npz]
    edlc inspect MODEL [--input-shape ...]
    edlc targets | passes

Exit codes: 0 success, 2 bad input (`edlc: error: ...` on one line), 1 internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edlc.errors import EdlcError, InputError


class UsageError(EdlcError):
    """Bad command-line arguments."""


def _progress(msg: str) -> None:
    print(f"edlc: {msg}", file=sys.stderr, flush=True)


def parse_shape_binding(text: str) -> tuple[str, tuple[int, ...]]:
    """`x=1x3x224x224` -> ("x", (1, 3, 224, 224)); also accepts commas."""
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.replace(",", "x").split("x") if d != "")
        if any(d < 0 for d in shape):
            raise ValueError
    except ValueError:
        raise UsageError(f"--input-shape '{text}': expected NAME=DIMS, e.g. input=1x3x224x224") from None
    return name, shape


def _shapes(bindings: Sequence[str] | None) -> dict[str, tuple[int, ...]] | None:
    return dict(parse_shape_binding(b) for b in bindings) if bindings else None


# ---- verbs -------------------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    import edlc

    if args.aot:
        raise UsageError(f"--aot builds firmware for microcontroller targets; target '{args.target}' "
                         "has no firmware form in this version of edlc")
    t0 = time.perf_counter()
    _progress(f"compiling {args.model} for {args.target} at -O{args.opt_level}")
    module = edlc.compile(
        args.model, target=args.target, input_shapes=_shapes(args.input_shape), opt_level=args.opt_level,
        passes=args.passes.split(",") if args.passes else None,
        disabled_passes=args.disable_pass or (), verify_each=args.verify_each,
        print_after=args.print_ir_after or (),
        target_options={"mcpu": args.mcpu, "mattr": args.mattr, "arch": args.arch},
        records=args.records, quantize=args.quantize, calibration=args.calib, sparsity=args.sparsity,
    )
    out = module.export(args.output)
    print(f"compiled {args.model} -> {out} in {time.perf_counter() - t0:.1f} s "
          f"({len(module.manifest['params'])} weight tensors)")
    return 0


def _random_inputs(specs: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    from edlc.ir.types import numpy_dtype

    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = [d if isinstance(d, int) else 1 for d in s["shape"]]
        dt = numpy_dtype(s["dtype"])
        if dt.kind == "f":
            out[s["name"]] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            out[s["name"]] = rng.integers(0, 2, shape).astype(bool)
        else:  # small non-negative ints: valid ids/indices for any table of 10 or more rows
            out[s["name"]] = rng.integers(0, 10, shape).astype(dt)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    import edlc

    module = edlc.load(args.artifact)
    if args.inputs:
        try:
            with np.load(args.inputs, allow_pickle=False) as z:
                inputs = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise InputError(f"{args.inputs}: cannot read inputs ({e})") from e
    else:
        inputs = _random_inputs(module.inputs, args.seed)
        print(f"no --inputs given: using random inputs (seed {args.seed})")
    times = module.time(inputs, repeat=args.repeat, warmup=1) if args.repeat else []
    outs = module.run(inputs)
    for name, a in outs.items():
        stats = f"min {a.min():.6g} max {a.max():.6g} mean {a.mean():.6g}" if a.size and a.dtype.kind in "fiub" else ""
        print(f"{name}: {a.dtype}{list(a.shape)} {stats}")
    if times:
        print(f"latency: median {np.median(times) * 1e3:.3f} ms over {len(times)} runs")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.output, **outs)
        print(f"wrote {args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import edlc
    from edlc.driver import import_model
    from edlc.ir.stats import graph_stats
    from edlc.lower import unsupported_nodes
    from edlc.pass_manager import PassManager

    graph = import_model(args.model, _shapes(args.input_shape))
    graph = PassManager(["fold-constants", "eliminate-dead-code"]).run(graph)
    st = graph_stats(graph)
    print(f"model: {args.model}  (graph '{graph.name}', opset {graph.opset.get('', '?')}, edlc {edlc.__version__})")
    for v in graph.inputs:
        print(f"  input  {v.name}: {v.type}")
    for v in graph.outputs:
        print(f"  output {v.name}: {v.type}")
    print(f"nodes: {st.nodes}   parameters: {st.parameters:,} ({st.parameter_bytes / 1e6:.2f} MB)")
    print(f"FLOPs: {st.flops / 1e9:.3f} G" if st.flops is not None else "FLOPs: unknown (symbolic shapes; bind them with --input-shape)")
    if st.peak_activation_bytes is not None:
        print(f"activation memory: peak {st.peak_activation_bytes / 1e6:.2f} MB, all tensors {st.activation_bytes / 1e6:.2f} MB")
    print("ops:")
    for op, n in graph.op_histogram().items():
        print(f"  {op:28} {n}")
    bad = unsupported_nodes(graph)
    if bad:
        print(f"unsupported: {len(bad)} node(s)")
        for name, op, dom in bad:
            print(f"  {name}: {op}" + (f" (domain {dom})" if dom else ""))
    else:
        print("unsupported: none")
    if args.print_ir:
        print(graph)
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    """Run the pass pipeline and write the graph back as ONNX (standard ops where possible)."""
    import onnx

    from edlc.artifact import atomic_file
    from edlc.driver import import_model, optimize

    graph = import_model(args.model, _shapes(args.input_shape))
    before = len(graph.nodes)
    graph, pm = optimize(graph, args.opt_level, args.passes.split(",") if args.passes else None,
                         args.disable_pass or ())
    with atomic_file(args.output) as tmp:
        onnx.save(graph.to_onnx(), tmp)
    if args.time_passes:
        print(pm.timing_report())
    print(f"optimized {args.model} -> {args.output}: {before} -> {len(graph.nodes)} nodes")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from edlc.target import available_targets

    for name, desc in available_targets().items():
        print(f"{name:14} {desc}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from edlc.pass_manager import available_passes

    for name, info in available_passes().items():
        level = f"-O{info.min_opt_level}+" if info.min_opt_level <= 3 else "on request"
        print(f"{name:32} {level:11} {info.description}")
    return 0


# ---- parser ------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edlc", description="edlc, the efficient deep learning compiler")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    c = sub.add_parser("compile", help="compile a model into an artifact directory")
    c.add_argument("model", help="ONNX model file")
    imp = c.add_argument_group("import")
    imp.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                     help="bind an input's shape, e.g. input=1x3x224x224 (repeatable)")
    ps = c.add_argument_group("passes")
    ps.add_argument("-O", dest="opt_level", type=int, default=2, choices=range(4), help="optimization level (default 2)")
    ps.add_argument("--passes", help="explicit comma-separated pass list instead of the -O pipeline")
    ps.add_argument("--disable-pass", action="append", metavar="NAME")
    ps.add_argument("--verify-each", action="store_true", help="verify the graph after every pass")
    ps.add_argument("--print-ir-after", action="append", metavar="PASS|all")
    q = c.add_argument_group("compression")
    q.add_argument("--quantize", choices=["int8", "fp16", "bf16"])
    q.add_argument("--calib", metavar="DATA.npz", help="calibration inputs for --quantize int8")
    q.add_argument("--sparsity", metavar="SPEC", help="channel:0.5 | block:4x4:0.9 | 2:4")
    tu = c.add_argument_group("tuning")
    tu.add_argument("--records", metavar="DIR", help="apply tuning records from `edlc tune`")
    bd = c.add_argument_group("build")
    bd.add_argument("--target", default="x86", help="target name (see `edlc targets`)")
    bd.add_argument("--mcpu", help="CPU model for the target (LLVM name)")
    bd.add_argument("--mattr", help="comma-separated target features, e.g. +avx512f")
    bd.add_argument("--arch", help="GPU architecture for --target cuda, e.g. sm_90")
    bd.add_argument("--aot", action="store_true", help="write a firmware project (microcontroller targets)")
    bd.add_argument("-o", "--output", required=True, help="artifact directory to write")
    c.set_defaults(fn=cmd_compile)

    r = sub.add_parser("run", help="run a compiled artifact")
    r.add_argument("artifact", help="artifact directory from `edlc compile`")
    r.add_argument("--inputs", help=".npz with one array per model input (random when omitted)")
    r.add_argument("--output", help="write outputs to this .npz")
    r.add_argument("--repeat", type=int, default=0, help="also time this many runs")
    r.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("inspect", help="ops, parameters, FLOPs, memory and unsupported ops of a model")
    i.add_argument("model")
    i.add_argument("--input-shape", action="append", metavar="NAME=DIMS")
    i.add_argument("--print-ir", action="store_true", help="print the graph in edlc's text form")
    i.set_defaults(fn=cmd_inspect)

    o = sub.add_parser("optimize", help="run graph passes and write the result as ONNX")
    o.add_argument("model")
    o.add_argument("--input-shape", action="append", metavar="NAME=DIMS")
    o.add_argument("-O", dest="opt_level", type=int, default=2, choices=range(4))
    o.add_argument("--passes", help="explicit comma-separated pass list")
    o.add_argument("--disable-pass", action="append", metavar="NAME")
    o.add_argument("--time-passes", action="store_true")
    o.add_argument("-o", "--output", required=True, help="ONNX file to write")
    o.set_defaults(fn=cmd_optimize)

    sub.add_parser("targets", help="list targets").set_defaults(fn=cmd_targets)
    sub.add_parser("passes", help="list graph passes").set_defaults(fn=cmd_passes)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except EdlcError as e:
        if debug:
            traceback.print_exc()
        print(f"edlc: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silence the flush at exit)
        return 0
    except KeyboardInterrupt:
        print("edlc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in edlc or TVM, not the user's input
        if debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"edlc: internal error: {type(e).__name__}: {first[:300]} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
