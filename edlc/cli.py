"""The `edlc` command.

    edlc compile MODEL --target x86 [--input-shape x=1x3x224x224]... [-O N] -o OUT
                 [--passes a,b] [--disable-pass P] [--print-ir-after P|all] [--time-passes]
                 [--verify-each] [--pass-plugin MODULE:FUNCTION]
    edlc run OUT [--inputs in.npz] [--output out.npz]
    edlc bench MODEL|OUT [--compare onnxruntime] [--repeat N] [--warmup N] [--threads N]
               [--input-shape NAME=DIMS]... [--inputs in.npz] [--profile] [--json FILE]
    edlc inspect MODEL [--input-shape ...] [--passes [a,b]] [-O N] [--target T]
    edlc optimize MODEL [--target T] [pass flags] -o opt.onnx
    edlc quantize MODEL --calib data.npz -o model.int8.onnx [--calib-method M] [--max-drop N]
    edlc compile MODEL --quantize int8 --calib data.npz | --quantize fp16|bf16 [--exclude NODE] -o OUT
    edlc targets | passes

Exit codes: 0 success, 2 bad input (`edlc: error: ...` on one line), 1 internal error.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edlc.errors import EdlcError, InputError, first_line

PIPELINE_TARGET_HELP = "the target whose -O pipeline runs (passes made for other kinds of target are left out)"


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


# ---- passes: plugins, validation, reports --------------------------------------------------------
def _kebab(name: str) -> str:
    """`fuse_silu` / `fuseSiLU` -> `fuse-silu` / `fuse-si-lu`: the name a plain function gets."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name)
    return re.sub(r"[_\s]+", "-", name).strip("-").lower()


def _import_plugin_module(where: str, spec: str):
    """Import MODULE of a plugin spec: a path to a .py file, or an importable module name."""
    path = Path(where)
    if where.endswith(".py") or os.sep in where or "/" in where or path.is_file():
        if not path.is_file():
            raise UsageError(f"--pass-plugin '{spec}': no such file '{where}'")
        path = path.resolve()
        # one module per file and process: loading the same plugin twice registers it once
        modname = (f"edlc_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_"
                   f"{hashlib.sha1(str(path).encode()).hexdigest()[:8]}")
        if modname in sys.modules:
            return sys.modules[modname]
        loader_spec = importlib.util.spec_from_file_location(modname, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UsageError(f"--pass-plugin '{spec}': cannot import '{where}' as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[modname] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[modname]
            raise UsageError(f"--pass-plugin '{spec}': importing {where} failed: "
                             f"{type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name and (where == e.name or where.startswith(e.name + ".")):
            raise UsageError(f"--pass-plugin '{spec}': no module named '{where}' "
                             "(give an importable module or a path to a .py file)") from e
        raise UsageError(f"--pass-plugin '{spec}': importing {where} failed: {e}") from e
    except Exception as e:
        raise UsageError(f"--pass-plugin '{spec}': importing {where} failed: {type(e).__name__}: {e}") from e


def load_pass_plugin(spec: str) -> str:
    """Load `MODULE:FUNCTION` and return the name of its pass.

    FUNCTION is either a pass already registered with `@register_pass` when MODULE is imported
    (its registered name is used) or a plain function `Graph -> PassResult`, registered here
    under its kebab-case name (`fuse_silu` -> `fuse-silu`), joining no -O pipeline by itself.
    """
    from edlc.pass_manager import PassResult, available_passes, register_pass

    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(f"--pass-plugin '{spec}': expected MODULE:FUNCTION, e.g. my_passes:fuse_silu "
                         "or path/to/passes.py:fuse_silu")
    module = _import_plugin_module(where, spec)
    fn = getattr(module, attr, None)
    if fn is None:
        raise UsageError(f"--pass-plugin '{spec}': module '{where}' has no function '{attr}'")
    if not callable(fn):
        raise UsageError(f"--pass-plugin '{spec}': '{attr}' is not callable (it is of type {type(fn).__name__}); "
                         "expected a function Graph -> PassResult")
    registered = available_passes()
    for info in registered.values():
        if info.fn is fn or getattr(info.fn, "__wrapped__", None) is fn:
            return info.name
    name = _kebab(attr)
    taken = registered.get(name)
    # a plain function an earlier plugin load registered (in this process) may be replaced;
    # two plugins of one command giving the same name are caught by pass_options
    if taken is not None and not hasattr(taken.fn, "edlc_plugin_spec"):
        raise UsageError(f"--pass-plugin '{spec}': the pass name '{name}' is taken by another pass; "
                         "register yours with @register_pass under a name of its own")

    @functools.wraps(fn)
    def plugin_pass(graph):
        result = fn(graph)
        if not isinstance(result, PassResult):
            raise UsageError(f"pass '{name}' (--pass-plugin '{spec}') returned "
                             f"{type(result).__name__}, expected edlc.pass_manager.PassResult")
        return result

    plugin_pass.edlc_plugin_spec = spec
    doc = (fn.__doc__ or "").strip().splitlines()
    register_pass(name, doc[0] if doc else f"from --pass-plugin {spec}")(plugin_pass)
    return name


def _load_plugins(specs: Sequence[str] | None) -> list[str]:
    """Load every --pass-plugin; the names of their passes, in order, without repeats."""
    from edlc.pass_manager import get_pass

    names: dict[str, tuple[str, object]] = {}
    for spec in specs or ():
        name = load_pass_plugin(spec)
        fn = get_pass(name).fn
        fn = getattr(fn, "__wrapped__", fn)
        if name in names and names[name][1] is not fn:
            raise UsageError(f"--pass-plugin '{spec}' and --pass-plugin '{names[name][0]}' both give "
                             f"a pass named '{name}'")
        names.setdefault(name, (spec, fn))
    return list(names)


def _names(values: Sequence[str] | None) -> list[str]:
    """Flag values as a list: repeated flags and comma-separated lists both work."""
    return [n.strip() for v in values or () for n in v.split(",") if n.strip()]


def _check_passes(flag: str, names: Sequence[str], allow_all: bool = False) -> None:
    from edlc.pass_manager import available_passes

    known = available_passes()
    for n in names:
        if n not in known and not (allow_all and n == "all"):
            raise UsageError(f"{flag}: unknown pass '{n}'; available: {', '.join(known)}"
                             + (" (or 'all')" if allow_all else ""))


@dataclass
class PassOptions:
    """The pass flags of one command, checked: what `edlc.compile` / `optimize` take."""

    passes: list[str] | None  # None: the -O pipeline
    disabled: list[str]
    print_after: list[str]
    plugins: list[str]


def pass_options(args: argparse.Namespace, explicit: str | None = None) -> PassOptions:
    """Load --pass-plugin modules and validate --passes / --disable-pass / --print-ir-after.

    Plugin passes run after the -O pipeline (or after an explicit --passes list) unless
    --passes names them, in which case they run where named."""
    from edlc.pass_manager import default_pipeline

    plugins = _load_plugins(getattr(args, "pass_plugin", None))
    passes = _names([explicit]) if explicit is not None else None
    disabled = _names(getattr(args, "disable_pass", None))
    print_after = _names(getattr(args, "print_ir_after", None))
    _check_passes("--passes", passes or ())
    _check_passes("--disable-pass", disabled)
    _check_passes("--print-ir-after", print_after, allow_all=True)
    if plugins:
        base = passes if passes is not None else default_pipeline(args.opt_level)
        passes = base + [p for p in plugins if p not in base]
    return PassOptions(passes, disabled, print_after, plugins)


def pass_report(records: Sequence) -> list[str]:
    """Per pass (grouped by name, in order of first run): time, nodes before -> after, whether it
    changed the graph, then the report lines the pass returned (e.g. why a fusion was refused)."""
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(r.name, []).append(r)
    width = max([len(n) for n in groups] + [4])
    lines = [f"  {'pass':{width}} {'time':>10}  {'nodes':>14}  changed"]
    for name, rs in groups.items():
        ms = sum(r.seconds for r in rs) * 1e3
        runs = f" ({len(rs)} runs)" if len(rs) > 1 else ""
        changed = "yes" if any(r.modified for r in rs) else "no"
        lines.append(f"  {name:{width}} {ms:7.2f} ms  {rs[0].nodes_before:6} -> {rs[-1].nodes_after:<6}  "
                     f"{changed}{runs}")
        report = list(dict.fromkeys(line for line in rs[-1].report))
        lines.extend(f"      {line}" for line in report)
    return lines


# ---- verbs -------------------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    import edlc
    from edlc.pass_manager import timing_report
    from edlc.passes.quantize import cli as quantize_cli

    opts = pass_options(args, args.passes)
    t0 = time.perf_counter()
    _progress(f"compiling {args.model} for {args.target} at -O{args.opt_level}"
              + (f" with plugin pass(es) {', '.join(opts.plugins)}" if opts.plugins else ""))
    records: list = []
    try:
        module = edlc.compile(
            args.model, target=args.target, input_shapes=_shapes(args.input_shape),
            opt_level=args.opt_level, passes=opts.passes, disabled_passes=opts.disabled,
            verify_each=args.verify_each, print_after=opts.print_after,
            target_options={"mcpu": args.mcpu, "mattr": args.mattr, "arch": args.arch},
            records=args.records, quantize=args.quantize, calibration=args.calib, sparsity=args.sparsity,
            quantize_options=quantize_cli.options(args) if args.quantize == "int8" else
            _half_options(args) if args.quantize else None,
            pass_records=records, aot=args.aot,
        )
    finally:  # timings help most when a later stage fails: print them either way
        if args.time_passes:
            print(timing_report(records) if records else "(no passes ran)")
    out = module.export(args.output)
    if module.manifest.get("tuning"):
        print(_records_report(module.manifest["tuning"]))
    if module.manifest.get("sparsity"):
        from edlc.passes.sparsity.report import format_summary

        print(format_summary(module.manifest["sparsity"]))
    if module.manifest.get("precision"):
        from edlc.passes.precision import format_summary as format_precision

        print(format_precision(module.manifest["precision"]))
    print(f"compiled {args.model} -> {out} in {time.perf_counter() - t0:.1f} s "
          f"({module.manifest['kernels']} kernels, "
          f"{module.manifest.get('weight_tensors', len(module.manifest['params']))} weight tensors)")
    if getattr(module, "memory", None):  # a firmware project (microcontroller targets)
        print(_memory_report(module.memory))
    return 0


def _half_options(args: argparse.Namespace) -> dict:
    """`quantize_options` for --quantize fp16|bf16: --exclude and --accumulate."""
    options: dict = {"node_block_list": args.exclude} if args.exclude else {}
    if args.accumulate:
        options["accumulate"] = args.accumulate
    return options


def _memory_report(memory: dict) -> str:
    f, r, a = memory["flash"], memory["ram"], memory["arena"]
    entry = f" + entry {f['entry']:,}" if f.get("entry") is not None else ""
    return (f"flash {f['total']:,} B (kernels {f['kernels']:,} + weights {f['weights']:,}{entry}); "
            f"RAM {r['total']:,} B (arena {a['size']:,}, liveness lower bound {a['lower_bound']:,}; "
            f"stack ~{r['stack_estimate']:,})"
            + (f"; static program {memory['program']['file']:,} B" if memory.get("program") else "")
            + "; details in memory.json")


def cmd_tune(args: argparse.Namespace) -> int:
    from edlc.tune import TuningInterrupted, parse_duration, tune

    budget = parse_duration(args.time_budget) if args.time_budget else None
    try:
        result = tune(args.model, args.target, records=args.records, trials=args.trials,
                      input_shapes=_shapes(args.input_shape), opt_level=args.opt_level,
                      time_budget_s=budget, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                      population=args.population, progress=_progress,
                      target_options={"mcpu": args.mcpu, "mattr": args.mattr})
    except TuningInterrupted as e:
        print(f"edlc: {e}", file=sys.stderr)
        return 130
    print(result.summary())
    return 0


def _records_report(tuning: dict | None) -> str:
    if not tuning:
        return ""
    found, missing = tuning["kernels_with_record"], tuning["kernels_without_record"]
    line = f"tuning records {tuning['records']}: {len(found)} of {len(found) + len(missing)} kernels found a record"
    left_out = tuning.get("records_left_out") or []
    if left_out:
        line += f"; {len(left_out)} line(s) of the database do not parse and were left out ({left_out[0]})"
    kept = tuning.get("kept_default_schedule", 0)
    if kept:
        line += (f"; {kept} kept edlc's default schedule (it beat the kernel's records when `edlc tune` "
                 "measured them again at its end)")
    return line + (f"; without a record: {', '.join(missing)}" if missing else "")


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
    from edlc.runtime import load_inputs

    module = edlc.load(args.artifact)
    if args.inputs:
        inputs = load_inputs(args.inputs)
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
        _save_outputs(args.output, outs)
        print(f"wrote {args.output}")
    return 0


def _save_outputs(path: str, outs: dict[str, np.ndarray]) -> None:
    """Write the outputs as an .npz, atomically (a reader never sees half a file)."""
    from edlc.artifact import atomic_file

    try:
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **outs)
    except OSError as e:
        raise InputError(f"--output {path}: cannot write it ({e.strerror or e})") from e


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency, throughput, memory, GFLOP/s; optionally against onnxruntime and per kernel."""
    from edlc.bench import bench, default_threads, format_report, write_json

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    threads = args.threads or default_threads()
    os.environ["TVM_NUM_THREADS"] = str(threads)  # before anything starts TVM's thread pool
    report = bench(args.source, model=args.model, compare=args.compare, repeat=args.repeat,
                   warmup=args.warmup, threads=threads, input_shapes=_shapes(args.input_shape),
                   inputs=args.inputs, seed=args.seed, profile=args.profile, target=args.target,
                   opt_level=args.opt_level, records=args.records, progress=_progress)
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if report.outputs_match is False:
        print(f"edlc: outputs differ from onnxruntime (max |diff| {report.max_abs_diff:.3g})",
              file=sys.stderr)
        return 1
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import edlc
    from edlc.driver import import_model, optimize
    from edlc.ir.stats import graph_stats
    from edlc.lower import unsupported_nodes
    from edlc.pass_manager import PassManager
    from edlc.target import get_target

    # any pass flag asks for the pipeline report, as --passes does
    run_passes = args.passes is not None or args.opt_level is not None or any(
        (args.disable_pass, args.print_ir_after, args.pass_plugin, args.verify_each))
    args.opt_level = 2 if args.opt_level is None else args.opt_level
    opts = pass_options(args, args.passes or None) if run_passes else None
    graph = import_model(args.model, _shapes(args.input_shape))
    pm = None
    if opts is None:  # the model as edlc sees it after the basic cleanups
        graph = PassManager(["fold-constants", "eliminate-dead-code"]).run(graph)
    else:
        graph, pm = optimize(graph, args.opt_level, opts.passes, opts.disabled, args.verify_each,
                             opts.print_after, target=get_target(args.target))
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
    if pm is not None:
        which = "--passes" if args.passes else f"-O{args.opt_level}"
        print(f"passes ({which}): {len(graph.nodes)} nodes after {len(pm.records)} pass run(s)")
        print("\n".join(pass_report(pm.records)))
    if args.print_ir:
        print(graph)
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    """Run the pass pipeline and write the graph back as ONNX (standard ops where possible)."""
    import onnx

    from edlc.artifact import atomic_file
    from edlc.driver import import_model, optimize
    from edlc.target import get_target

    opts = pass_options(args, args.passes)
    graph = import_model(args.model, _shapes(args.input_shape))
    before = len(graph.nodes)
    graph, pm = optimize(graph, args.opt_level, opts.passes, opts.disabled, args.verify_each,
                         opts.print_after, target=get_target(args.target))
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
    """Passes in pipeline order (with the -O level each joins at), then those run on request."""
    from edlc.pass_manager import available_passes, default_pipeline

    _load_plugins(args.pass_plugin)
    known = available_passes()
    order = default_pipeline(3) + [n for n in known if known[n].min_opt_level > 3]
    for name in order:
        info = known[name]
        level = f"-O{info.min_opt_level}+" if info.min_opt_level <= 3 else "on request"
        desc = (info.description or "").strip().splitlines()
        print(f"{name:32} {level:11} {desc[0] if desc else ''}")
    return 0


# ---- parser ------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from edlc.passes.quantize import cli as quantize_cli

    p = _Parser(prog="edlc", description="edlc, the efficient deep learning compiler")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    c = sub.add_parser("compile", help="compile a model into an artifact directory")
    c.add_argument("model", help="ONNX model file")
    imp = c.add_argument_group("import")
    imp.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                     help="bind an input's shape, e.g. input=1x3x224x224 (repeatable)")
    _pass_flags(c.add_argument_group("passes"))
    q = c.add_argument_group("compression")
    q.add_argument("--quantize", choices=["int8", "fp16", "bf16"],
                   help="int8: post-training quantization (needs --calib); fp16, bf16: weights and "
                        "activations in half precision, sums in float32, no calibration (--exclude "
                        "keeps a node in float32)")
    q.add_argument("--accumulate", choices=["float32", "float16"],
                   help="what --quantize fp16 convs and matmuls sum in: float32 (default) or float16: "
                        "faster where the CPU has float16 arithmetic (arm --mcpu cortex-a76, "
                        "neoverse-n1 or --mattr +fp16; BERT 0.6x the instructions of float32), "
                        "less accurate")
    q.add_argument("--calib", metavar="DATA.npz",
                   help="calibration inputs for --quantize int8 (and for the refit after --sparsity channel:R)")
    quantize_cli.add_flags(q)
    q.add_argument("--sparsity", metavar="SPEC", help="channel:0.5 | block:4x4:0.9 | 2:4")
    tu = c.add_argument_group("tuning")
    tu.add_argument("--records", metavar="DIR", help="apply tuning records from `edlc tune`")
    bd = c.add_argument_group("build")
    bd.add_argument("--target", default="x86", help="target name (see `edlc targets`)")
    bd.add_argument("--mcpu", help="CPU model for the target (LLVM name)")
    bd.add_argument("--mattr", help="comma-separated target features, e.g. +avx512f")
    bd.add_argument("--arch", help="GPU architecture for --target cuda, e.g. sm_90")
    bd.add_argument("--aot", action="store_true", help="build ahead of time, no TVM runtime: a firmware project "
                                                     "(microcontrollers) or a static program (arm)")
    bd.add_argument("-o", "--output", required=True, help="artifact directory to write")
    c.set_defaults(fn=cmd_compile)

    t = sub.add_parser("tune", help="tune the model's kernels with MetaSchedule; write tuning records")
    t.add_argument("model", help="ONNX model file")
    t.add_argument("--target", default="x86", help="target name (see `edlc targets`)")
    t.add_argument("--input-shape", action="append", metavar="NAME=DIMS", help="bind an input's shape (repeatable)")
    t.add_argument("-O", dest="opt_level", type=int, default=2, choices=range(4),
                   help="optimization level the model will be compiled at (default 2)")
    t.add_argument("--trials", type=int, required=True,
                   help="measured candidates the records should hold in all (earlier runs count)")
    t.add_argument("--time-budget", metavar="DURATION", help="stop after this long, e.g. 10m, 1h")
    t.add_argument("--records", metavar="DIR", required=True, help="tuning database directory")
    t.add_argument("--population", type=int, default=512,
                   help="evolutionary search population per batch (default 512; larger: slower, finer)")
    t.add_argument("--mcpu", help="CPU model for the target, as for compile (e.g. cortex-a76 for arm)")
    t.add_argument("--mattr", help="comma-separated target features, as for compile (e.g. +dotprod)")
    t.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on RPC servers of this tracker "
                   "(required for arm: candidates are cross-built here and timed on the board)")
    t.add_argument("--rpc-key", metavar="KEY", help="device key the RPC servers registered with")
    t.set_defaults(fn=cmd_tune)

    r = sub.add_parser("run", help="run a compiled artifact")
    r.add_argument("artifact", help="artifact directory from `edlc compile`")
    r.add_argument("--inputs", help=".npz with one array per model input (random when omitted)")
    r.add_argument("--output", help="write outputs to this .npz")
    r.add_argument("--repeat", type=int, default=0, help="also time this many runs")
    r.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    r.set_defaults(fn=cmd_run)

    b = sub.add_parser("bench",
                       help="latency, throughput, memory and GFLOP/s of a model or artifact")
    b.add_argument("source", metavar="MODEL|OUT",
                   help="ONNX model (compiled first) or artifact directory from `edlc compile`")
    b.add_argument("--compare", choices=["onnxruntime"],
                   help="also run onnxruntime on the same model and inputs; outputs must match")
    b.add_argument("--model", metavar="FILE",
                   help="the ONNX model an artifact was compiled from (for --compare and FLOPs)")
    b.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")
    b.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    b.add_argument("--threads", type=int,
                   help="TVM and onnxruntime threads (default: TVM_NUM_THREADS, else all CPUs)")
    b.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                   help="bind an input's shape, e.g. input=1x3x224x224 (repeatable)")
    b.add_argument("--inputs", help=".npz with one array per model input (random when omitted)")
    b.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    b.add_argument("--profile", action="store_true", help="per-kernel time table (Relax VM)")
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bb = b.add_argument_group("compile (for an ONNX model)")
    bb.add_argument("--target", help="target name (default x86)")
    bb.add_argument("-O", dest="opt_level", type=int, choices=range(4),
                    help="optimization level (default 2)")
    bb.add_argument("--records", metavar="DIR", help="apply tuning records from `edlc tune`")
    b.set_defaults(fn=cmd_bench)

    i = sub.add_parser("inspect", help="ops, parameters, FLOPs, memory and unsupported ops of a model")
    i.add_argument("model")
    i.add_argument("--input-shape", action="append", metavar="NAME=DIMS")
    i.add_argument("--print-ir", action="store_true", help="print the graph in edlc's text form")
    ip = i.add_argument_group("passes")
    ip.add_argument("--target", default="x86", help=PIPELINE_TARGET_HELP)
    ip.add_argument("--passes", nargs="?", const="", metavar="a,b",
                    help="run the -O pipeline (or the listed passes) and show, per pass, its time, "
                         "node counts before -> after and its report (implied by the other pass flags)")
    _pass_flags(ip, explicit=False, timing=False, opt_level=None)
    i.set_defaults(fn=cmd_inspect)

    o = sub.add_parser("optimize", help="run graph passes and write the result as ONNX")
    o.add_argument("model")
    o.add_argument("--input-shape", action="append", metavar="NAME=DIMS")
    o.add_argument("--target", default="x86", help=PIPELINE_TARGET_HELP)
    _pass_flags(o.add_argument_group("passes"))
    o.add_argument("-o", "--output", required=True, help="ONNX file to write")
    o.set_defaults(fn=cmd_optimize)

    quantize_cli.add_parser(sub)

    sub.add_parser("targets", help="list targets").set_defaults(fn=cmd_targets)
    pl = sub.add_parser("passes", help="list graph passes and the -O level each joins at")
    pl.add_argument("--pass-plugin", action="append", metavar="MODULE:FUNCTION",
                    help="also load this plugin's pass (repeatable)")
    pl.set_defaults(fn=cmd_passes)
    return p


def _pass_flags(g, explicit: bool = True, timing: bool = True, opt_level: int | None = 2) -> None:
    """The pass flags compile, optimize and inspect share."""
    g.add_argument("-O", dest="opt_level", type=int, default=opt_level, choices=range(4),
                   help="optimization level: which passes run (default 2; see `edlc passes`)")
    if explicit:
        g.add_argument("--passes", metavar="a,b", help="explicit comma-separated pass list instead of the -O pipeline")
    g.add_argument("--disable-pass", action="append", metavar="PASS", help="skip this pass (repeatable)")
    g.add_argument("--verify-each", action="store_true", help="verify the graph after every pass")
    g.add_argument("--print-ir-after", action="append", metavar="PASS|all",
                   help="print the graph after this pass, or after every pass (repeatable)")
    if timing:
        g.add_argument("--time-passes", action="store_true",
                       help="print each pass's time and node counts before -> after")
    g.add_argument("--pass-plugin", action="append", metavar="MODULE:FUNCTION",
                   help="load a pass from an importable module or a .py file; it runs after the "
                        "-O pipeline unless --passes places it (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line, also after the verb
        argv = ["--debug", *(a for a in argv if a != "--debug")]
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
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"edlc: internal error: {type(e).__name__}: {first_line(e, 300)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
