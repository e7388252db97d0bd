"""`edlc bench`: latency, throughput, memory and GFLOP/s of a model, optionally against
onnxruntime, with a per-kernel profile.

    report = bench("model.onnx", compare="onnxruntime", profile=True)
    print(format_report(report))

The source is an ONNX file (compiled here, for x86 at -O2 unless told otherwise) or an artifact
directory from `edlc compile` (loaded). Every figure comes from this process on this machine:

- latency: median, p90 and min of `repeat` runs after `warmup` runs (wall clock, inputs
  converted once); throughput = batch / median, the batch being the first input's first dim.
- peak memory: the process's peak resident set size while the runtime is set up and run, minus
  the resident size just before. On Linux the peak (VmHWM in /proc/self/status) is reset through
  /proc/self/clear_refs first; elsewhere `resource.getrusage` gives the lifetime peak, so the
  delta is a lower bound (0 when an earlier phase, such as compiling, peaked higher).
- GFLOP/s: the model's FLOPs (`edlc.ir.stats`, multiply-add = 2) over the median latency, and its
  share of `machine_peak_gflops()`, an estimate from /proc/cpuinfo.
- profile: `Module.profile` (the Relax VM's instrument hook); per-kernel FLOPs come from TVM's
  `estimate_tir_flops` on the same kernels, rebuilt from the model up to code generation.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edlc.artifact import json_safe
from edlc.errors import EdlcError, InputError, first_line
from edlc.runtime import load_inputs

# how onnxruntime and edlc outputs must agree (as the ONNX conformance tests compare)
RTOL, ATOL = 1e-3, 1e-4


# ---- the machine ---------------------------------------------------------------------------------
@dataclass
class PeakEstimate:
    """Peak fp32 GFLOP/s of this machine = cores x clock x FLOPs/cycle: an estimate, not a
    measurement (turbo, thermal limits and shared FMA units move the real figure)."""

    gflops: float | None
    cores: int
    ghz: float | None
    flops_per_cycle: int
    isa: str  # the widest vector ISA found in the flags, e.g. "AVX-512+FMA"
    fma_units: int
    clock_source: str

    def describe(self) -> str:
        if self.gflops is None:
            return (f"unknown (no clock rate found; {self.cores} cores, "
                    f"{self.flops_per_cycle} FLOP/cycle)")
        return (f"{self.gflops:.1f} GFLOP/s, an estimate: {self.cores} cores x {self.ghz:.2f} GHz "
                f"({self.clock_source}) x {self.flops_per_cycle} fp32 FLOP/cycle "
                f"({self.isa}: {self.flops_per_cycle // max(self.fma_units, 1)} per FMA unit x "
                f"{self.fma_units} units assumed)")


def _cpuinfo() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    cpus = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        if "processor" in entry:
            cpus.append(entry)
    return cpus


def _usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cgroup_cpu_limit() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def machine_peak_gflops() -> PeakEstimate:
    """Estimate this machine's peak fp32 GFLOP/s from /proc/cpuinfo.

    cores: the physical cores this process may run on (SMT siblings share their FMA units),
    capped by a cgroup CPU quota. clock: cpufreq's maximum if the kernel exposes it, else the
    nominal rate in the model name ("@ 2.40GHz"), else the highest "cpu MHz". FLOPs/cycle per
    core: fp32 lanes (16 for AVX-512, 8 for AVX/AVX2, 4 for SSE) x 2 when there is FMA
    (multiply and add in one instruction) x FMA units; AVX-512 with FMA is 32 per unit. Two units
    are assumed (most server cores since Haswell and Zen 2), one for AVX-512 on AMD Zen 4, whose
    512-bit instructions run on its two 256-bit units."""
    cpus = _cpuinfo()
    usable = _usable_cpus()
    mine = [c for c in cpus if int(c.get("processor", -1)) in usable] or cpus
    cores_set = {(c.get("physical id", "0"), c.get("core id", c["processor"])) for c in mine}
    cores = len(cores_set) or len(usable) or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = max(1, min(cores, int(limit)))
    first = mine[0] if mine else {}
    flags = set(first.get("flags", "").split())
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx" in flags:
        lanes, isa = 8, "AVX2" if "avx2" in flags else "AVX"
    elif "sse" in flags or platform.machine() in ("x86_64", "AMD64"):
        lanes, isa = 4, "SSE"
    else:
        lanes, isa = 4, platform.machine() or "unknown ISA"
    fma = "fma" in flags
    units = 2
    if lanes == 16 and first.get("vendor_id") == "AuthenticAMD" and first.get("cpu family") == "25":
        units = 1  # Zen 4: AVX-512 on two 256-bit pipes
    per_cycle = lanes * (2 if fma else 1) * units
    isa += "+FMA" if fma else " (no FMA)"

    ghz, source = None, ""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        ghz, source = khz / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    if ghz is None:
        m = re.search(r"@\s*([\d.]+)\s*GHz", first.get("model name", ""))
        if m:
            ghz, source = float(m.group(1)), "nominal, from the model name"
    if ghz is None:
        mhz = [float(c["cpu MHz"]) for c in mine if "cpu MHz" in c]
        if mhz:
            ghz, source = max(mhz) / 1e3, "'cpu MHz' in /proc/cpuinfo"
    gflops = cores * ghz * per_cycle if ghz else None
    return PeakEstimate(gflops, cores, ghz, per_cycle, isa, units, source)


# ---- threads and memory --------------------------------------------------------------------------
def default_threads() -> int:
    """TVM_NUM_THREADS if set, else every CPU this process may use (TVM's own default is half
    the CPUs on x86, assuming hyper-threads; onnxruntime's is the physical cores)."""
    env = os.environ.get("TVM_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else len(_usable_cpus())


def set_tvm_threads(n: int) -> int:
    """Ask TVM's runtime for `n` worker threads; returns the number it uses.

    TVM sizes its thread pool from TVM_NUM_THREADS when the pool first starts, so this sets the
    variable (the CLI does so before anything starts the pool). A pool already started can shrink
    through `runtime.config_threadpool` but not grow past its size. Starting or configuring the
    pool pins the calling thread (to one CPU for n = 1); its CPU set is restored, so that
    onnxruntime's threads, created from it later, are not confined."""
    os.environ["TVM_NUM_THREADS"] = str(n)
    import tvm

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        if tvm.runtime.num_threads() != n:
            import tvm_ffi

            tvm_ffi.get_global_func("runtime.config_threadpool")(1, n)  # 1: all ("big") cores
        return int(tvm.runtime.num_threads())
    finally:
        if cpus is not None and os.sched_getaffinity(0) != cpus:
            os.sched_setaffinity(0, cpus)


class PeakMemory:
    """Peak resident memory of this process during a block, over the resident size before it."""

    def __init__(self) -> None:
        self.method = ""
        self.delta_bytes: int | None = None

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def __enter__(self) -> PeakMemory:
        self._rss = self._status("VmRSS")
        self._reset = False
        if self._rss is not None:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                self._reset = True
            except OSError:
                pass
        self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self._reset:
            hwm = self._status("VmHWM")
            if hwm is not None and self._rss is not None:
                self.delta_bytes = max(0, hwm - self._rss)
                self.method = ("peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS "
                               "before; pages the process freed earlier and reuses do not count")
                return
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.delta_bytes = max(0, after - self._maxrss) * scale
        self.method = ("growth of the lifetime peak RSS (resource.getrusage ru_maxrss): a lower "
                       "bound, 0 when an earlier phase peaked higher")


# ---- figures -------------------------------------------------------------------------------------
@dataclass
class Figures:
    """One runtime's figures on one model and input set."""

    runtime: str  # "edlc" or "onnxruntime"
    threads: int
    repeat: int
    warmup: int
    batch: int
    median_ms: float
    p90_ms: float
    min_ms: float
    throughput: float  # inferences per second: batch / median
    peak_memory_mb: float | None  # see Report.memory_method
    gflops: float | None  # model FLOPs / median latency
    peak_fraction: float | None  # gflops / the machine's estimated peak
    times_ms: list[float] = field(default_factory=list)


def figures(runtime: str, times: Sequence[float], *, threads: int, warmup: int, batch: int,
            flops: int | None, peak: PeakEstimate | None, memory_bytes: int | None) -> Figures:
    """Figures from wall-clock times in seconds."""
    t = np.asarray(times, dtype=np.float64)
    median = float(np.median(t))
    gflops = flops / median / 1e9 if flops and median > 0 else None
    frac = gflops / peak.gflops if gflops is not None and peak is not None and peak.gflops else None
    return Figures(runtime, threads, len(t), warmup, batch, median * 1e3,
                   float(np.percentile(t, 90)) * 1e3, float(t.min()) * 1e3,
                   batch / median if median > 0 else float("inf"),
                   memory_bytes / 1e6 if memory_bytes is not None else None, gflops, frac,
                   [float(x) * 1e3 for x in t])


@dataclass
class KernelRow:
    """One line of the profile: per inference, averaged over the profiled runs."""

    name: str
    calls: float  # per inference
    ms: float  # per inference, exclusive
    share: float  # percent of the profiled time
    gflops: float | None  # None for VM builtins and kernels without a FLOP estimate
    builtin: bool


@dataclass
class Report:
    source: str
    kind: str  # "model" (an ONNX file compiled here) or "artifact"
    target: str
    opt_level: int | None
    compile_seconds: float | None
    inputs: str  # how the inputs were made
    input_specs: list[str]
    model_flops: int | None
    flops_source: str
    peak: PeakEstimate
    memory_method: str
    edlc: Figures
    onnxruntime: Figures | None = None
    onnx_model: str | None = None
    max_abs_diff: float | None = None
    outputs_match: bool | None = None
    ratio: float | None = None  # edlc median latency / onnxruntime median latency
    profile: list[KernelRow] | None = None
    profile_runs: int = 0
    profile_ms: float | None = None  # profiled time per inference (sum of the rows)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak"]["estimate"] = self.peak.describe()
        return json_safe(d)


# ---- helpers -------------------------------------------------------------------------------------
def model_flops(model, input_shapes: Mapping[str, Sequence[int]] | None = None) -> int | None:
    """FLOPs of one inference of the model as imported (after constant folding and dead code
    elimination, before fusion), by `edlc.ir.stats`; None when shapes are symbolic."""
    from edlc.driver import import_model
    from edlc.ir.stats import graph_stats
    from edlc.pass_manager import PassManager

    graph = import_model(model, input_shapes)
    graph = PassManager(["fold-constants", "eliminate-dead-code"]).run(graph)
    return graph_stats(graph).flops


def kernel_flops(model, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 opt_level: int = 2, target: str = "x86") -> dict[str, float]:
    """FLOPs per call of each kernel `edlc.compile(model, ...)` builds, keyed by kernel name:
    the same import, passes, lowering and fusion as the build, before schedules (whose weight
    tiles and copies would blur the count), then TVM's `estimate_tir_flops` per PrimFunc."""
    import tvm
    from tvm import tirx

    from edlc.driver import import_model, optimize
    from edlc.lower import lower, pipeline
    from edlc.target import get_target

    tgt = get_target(target)
    graph, _ = optimize(import_model(model, input_shapes), opt_level, target=tgt)
    lowered = lower(graph)
    with tvm.transform.PassContext(opt_level=3 if opt_level > 0 else 0):
        mod = pipeline.fuse(lowered.mod, tgt.tvm_target())
    flops = {gv.name_hint: pipeline.estimate_flops(f) for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc)}
    return {name: n for name, n in flops.items() if n is not None}


def random_inputs(specs: list[dict[str, Any]], shapes: Mapping[str, Sequence[int]] | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for the module's input specs; `shapes` fills symbolic dims."""
    from edlc.cli import _random_inputs

    specs = [dict(s, shape=list(shapes[s["name"]])) if shapes and s["name"] in shapes else s
             for s in specs]
    return _random_inputs(specs, seed)


def _batch(specs: list[dict[str, Any]], inputs: Mapping[str, np.ndarray]) -> int:
    if not specs:
        return 1
    a = np.asarray(inputs[specs[0]["name"]])
    return int(a.shape[0]) if a.ndim >= 1 and a.shape[0] > 0 else 1


def _sha256(path: str | os.PathLike) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _static_shapes(specs: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    return {s["name"]: tuple(s["shape"]) for s in specs
            if s.get("shape") is not None and all(isinstance(d, int) for d in s["shape"])}


def ort_provider(device: str) -> tuple[str, str | None]:
    """The onnxruntime execution provider to compare with a model that runs on `device` ("cpu"
    or "cuda"), and a note when onnxruntime cannot run on that device."""
    if device != "cuda":
        return "CPUExecutionProvider", None
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "CUDAExecutionProvider", None
    return "CPUExecutionProvider", ("this onnxruntime has no CUDAExecutionProvider (install "
                                    "onnxruntime-gpu): edlc on the GPU is compared with "
                                    "onnxruntime on the CPU")


def run_onnxruntime(model_path: str | os.PathLike, inputs: Mapping[str, np.ndarray], *,
                    repeat: int, warmup: int, threads: int,
                    provider: str = "CPUExecutionProvider"
                    ) -> tuple[list[float], dict[str, np.ndarray], int | None, str]:
    """Times (s), outputs, peak memory delta and its method for onnxruntime's `provider` with
    `threads` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    with PeakMemory() as mem:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        try:
            sess = ort.InferenceSession(str(model_path), so, providers=[provider])
        except Exception as e:
            raise InputError(f"{model_path}: onnxruntime cannot load the model: "
                             f"{first_line(e, 300)}") from e
        if provider not in sess.get_providers():  # e.g. CUDA libraries missing: it falls back
            raise InputError(f"onnxruntime could not start its {provider} (it runs with "
                             f"{', '.join(sess.get_providers())})")
        names = [i.name for i in sess.get_inputs()]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InputError(f"{model_path}: onnxruntime wants input(s) {missing} that the edlc "
                             f"module does not take ({sorted(inputs)})")
        feed = {n: inputs[n] for n in names}
        outs = sess.run(None, feed)
        times = []
        for i in range(warmup + repeat):
            t0 = time.perf_counter()
            sess.run(None, feed)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times, dict(zip([o.name for o in sess.get_outputs()], outs)), mem.delta_bytes, mem.method


def compare_outputs(got: Mapping[str, np.ndarray],
                    want: Mapping[str, np.ndarray]) -> tuple[float, bool]:
    """Max |edlc - onnxruntime| over all outputs (matched by name, else by position) and
    whether they agree within RTOL/ATOL with equal shapes."""
    pairs = ([(got[k], want[k]) for k in want] if set(want) <= set(got)
             else list(zip(got.values(), want.values())))
    if len(got) != len(want):
        return float("inf"), False
    diff, ok = 0.0, True
    for a, b in pairs:
        if a.shape != b.shape:
            return float("inf"), False
        if a.size == 0:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(a64) & np.isnan(b64)
        d = np.where(both_nan, 0.0, np.abs(a64 - b64))
        diff = max(diff, float(np.nan_to_num(d, nan=np.inf).max()))
        ok = ok and bool(np.all(both_nan | np.isclose(a64, b64, rtol=RTOL, atol=ATOL)))
    return diff, ok


def profile_rows(rows, runs: int, flops: Mapping[str, float]) -> list[KernelRow]:
    """`Module.profile` rows as per-inference KernelRows with shares and GFLOP/s."""
    total = sum(r.seconds for r in rows) or 1.0
    out = []
    for r in rows:
        per_call = flops.get(r.name) if not r.builtin else None
        gflops = per_call * r.calls / r.seconds / 1e9 if per_call and r.seconds > 0 else None
        out.append(KernelRow(r.name, r.calls / runs, r.seconds / runs * 1e3,
                             100.0 * r.seconds / total, gflops, r.builtin))
    return out


# ---- the benchmark -------------------------------------------------------------------------------
def bench(source: str | os.PathLike, *, model: str | os.PathLike | None = None,
          compare: str | None = None, repeat: int = 20, warmup: int = 2, threads: int | None = None,
          input_shapes: Mapping[str, Sequence[int]] | None = None,
          inputs: Mapping[str, np.ndarray] | str | os.PathLike | None = None, seed: int = 0,
          profile: bool = False, target: str | None = None, opt_level: int | None = None,
          records: str | os.PathLike | None = None, progress=None) -> Report:
    """Benchmark an ONNX file (compiled here with `edlc.compile`) or an artifact directory.

    `model` is the ONNX file an artifact was compiled from: needed for `compare="onnxruntime"`
    and to count FLOPs of an artifact whose manifest has no `flops` entry. `inputs` is a dict or
    an .npz path; random (seeded) inputs otherwise. Returns a Report; `format_report` prints it."""
    import edlc

    say = progress or (lambda msg: None)
    if repeat < 1:
        raise InputError(f"--repeat must be at least 1, got {repeat}")
    if warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {warmup}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    if compare not in (None, "onnxruntime"):
        raise InputError(f"--compare: unknown runtime '{compare}' (only onnxruntime)")
    src = Path(source)
    if not src.exists():
        raise InputError(f"{src}: no such file or directory (expected an ONNX model or an "
                         "artifact directory from `edlc compile`)")
    is_artifact = src.is_dir()
    if is_artifact:
        flags = (("--target", target), ("-O", opt_level), ("--records", records))
        given = [flag for flag, v in flags if v is not None]
        if given:
            raise InputError(f"{src} is an artifact directory, already compiled: "
                             f"{', '.join(given)} apply only to an ONNX model")
    elif model is not None:
        raise InputError(f"--model names the ONNX file of an artifact directory; {src} is itself "
                         "the model")
    if model is not None and not Path(model).is_file():
        raise InputError(f"--model {model}: no such file")
    if compare and is_artifact and model is None:
        raise InputError(f"--compare {compare} needs the ONNX model, and {src} is an artifact "
                         "directory: give the model it was compiled from with --model FILE")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = load_inputs(inputs)

    want_threads = threads or default_threads()
    tvm_threads = set_tvm_threads(want_threads)
    notes: list[str] = []
    if tvm_threads != want_threads:
        notes.append(f"TVM's thread pool was already started with fewer threads: it runs "
                     f"{tvm_threads}, not {want_threads} (set TVM_NUM_THREADS before the process "
                     "starts)")

    target_name = target or "x86"
    level = 2 if opt_level is None else opt_level
    compile_s = None
    onnx_model = str(model) if model is not None else (None if is_artifact else str(src))
    if is_artifact:
        module = edlc.load(src)
        target_name = module.target.name
        level = module.manifest.get("opt_level")
    else:
        say(f"compiling {src} for {target_name} at -O{level}")
        t0 = time.perf_counter()
        module = edlc.compile(str(src), target=target_name, input_shapes=input_shapes,
                              opt_level=level, records=records)
        compile_s = time.perf_counter() - t0

    if inputs is None:
        inputs = random_inputs(module.inputs, input_shapes if is_artifact else None, seed)
        how = f"random, seed {seed}"
    else:
        inputs = dict(inputs)
        how = "from --inputs"
    specs = [f"{k} {a.dtype}{list(a.shape)}" for k, a in inputs.items()]

    # FLOPs: the manifest's, else counted on the model
    flops, flops_source = None, "n/a"
    if is_artifact and module.manifest.get("flops") is not None:
        flops, flops_source = int(module.manifest["flops"]), "the artifact's manifest"
    elif onnx_model is not None:
        shapes = dict(input_shapes or {}) if not is_artifact else _static_shapes(module.inputs)
        try:
            flops = model_flops(onnx_model, shapes or None)
            flops_source = (f"edlc.ir.stats on {Path(onnx_model).name}" if flops is not None
                            else "n/a (symbolic input dims: bind them with --input-shape)")
        except EdlcError as e:
            notes.append(f"FLOPs not counted: {e}")
    else:
        flops_source = "n/a (the manifest has no flops; give --model FILE to count them)"
    if is_artifact and model is not None and module.manifest.get("model", {}).get("sha256") \
            not in (None, _sha256(model)):
        notes.append(f"--model {model} differs from the model the artifact was compiled from "
                     "(sha256)")

    peak = machine_peak_gflops()
    on_cpu = module.target.device == "cpu"
    if not on_cpu:
        notes.append("% of machine peak: n/a, the peak estimate is the CPU's")
    batch = _batch(module.inputs, inputs)
    say(f"timing edlc: {warmup} warm-up + {repeat} runs on {tvm_threads} thread(s)")
    with PeakMemory() as mem:
        times = module.time(inputs, repeat=repeat, warmup=warmup)
    ours = figures("edlc", times, threads=tvm_threads, warmup=warmup, batch=batch, flops=flops,
                   peak=peak if on_cpu else None, memory_bytes=mem.delta_bytes)
    report = Report(str(src), "artifact" if is_artifact else "model", target_name, level, compile_s,
                    how, specs, flops, flops_source, peak, mem.method, ours, onnx_model=onnx_model,
                    notes=notes)

    if compare:
        got = module.run(inputs)
        provider, note = ort_provider(module.target.device)
        notes.extend([note] if note else [])
        say(f"timing onnxruntime ({provider}): {warmup} warm-up + {repeat} runs on "
            f"{want_threads} thread(s)")
        ort_times, want, ort_mem, _ = run_onnxruntime(onnx_model, inputs, repeat=repeat,
                                                      warmup=warmup, threads=want_threads,
                                                      provider=provider)
        report.onnxruntime = figures("onnxruntime", ort_times, threads=want_threads, warmup=warmup,
                                     batch=batch, flops=flops,
                                     peak=peak if provider == "CPUExecutionProvider" else None,
                                     memory_bytes=ort_mem)
        report.max_abs_diff, report.outputs_match = compare_outputs(got, want)
        report.ratio = ours.median_ms / report.onnxruntime.median_ms

    if profile:
        say(f"profiling edlc: {repeat} runs")
        rows = module.profile(inputs, repeat=repeat, warmup=1)
        per_kernel: dict[str, float] = {}
        if onnx_model is not None:
            shapes = dict(input_shapes or {}) if not is_artifact else _static_shapes(module.inputs)
            sha = module.manifest.get("model", {}).get("sha256")
            usable = not is_artifact or sha == _sha256(onnx_model)
            try:
                per_kernel = kernel_flops(onnx_model, shapes or None, level or 0, target_name) \
                    if usable else {}
            except EdlcError:
                per_kernel = {}
            if is_artifact and len(per_kernel) != module.manifest.get("kernels"):
                per_kernel = {}  # built with other passes: names may not mean the same kernels
        report.profile = profile_rows(rows, repeat, per_kernel)
        report.profile_runs = repeat
        report.profile_ms = sum(r.ms for r in report.profile)
    return report


# ---- output --------------------------------------------------------------------------------------
def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def format_report(r: Report, top: int | None = None) -> str:
    """The report as text: the figures side by side, then the profile table (`top` rows)."""
    lines = []
    if r.kind == "model":
        lines.append(f"edlc bench {r.source}: compiled for {r.target} at -O{r.opt_level} in "
                     f"{r.compile_seconds:.1f} s")
    else:
        lines.append(f"edlc bench {r.source}: artifact for {r.target} (-O{r.opt_level})")
    lines.append(f"inputs: {', '.join(r.input_specs) or 'none'} ({r.inputs})")
    if r.model_flops is not None:
        lines.append(f"model FLOPs: {r.model_flops / 1e9:.4g} G = {r.model_flops:,} "
                     f"({r.flops_source})")
    else:
        lines.append(f"model FLOPs: {r.flops_source}")
    lines.append(f"machine peak: {r.peak.describe()}")
    lines.append(f"peak memory: {r.memory_method}")
    cols = [r.edlc] + ([r.onnxruntime] if r.onnxruntime else [])
    lines.append("")
    lines.append(f"  {'':22}" + "".join(f"{c.runtime:>14}" for c in cols))
    rows = [
        ("threads", lambda c: str(c.threads)),
        ("runs (+ warm-up)", lambda c: f"{c.repeat} (+{c.warmup})"),
        ("latency median ms", lambda c: f"{c.median_ms:.3f}"),
        ("latency p90 ms", lambda c: f"{c.p90_ms:.3f}"),
        ("latency min ms", lambda c: f"{c.min_ms:.3f}"),
        (f"throughput inf/s (x{r.edlc.batch})", lambda c: f"{c.throughput:.1f}"),
        ("peak memory MB", lambda c: _num(c.peak_memory_mb, ".1f")),
        ("GFLOP/s", lambda c: _num(c.gflops, ".2f")),
        ("% of machine peak", lambda c: _num(c.peak_fraction and 100 * c.peak_fraction, ".2f")),
    ]
    for label, get in rows:
        lines.append(f"  {label:22}" + "".join(f"{get(c):>14}" for c in cols))
    if r.onnxruntime:
        verdict = "match" if r.outputs_match else "DIFFER"
        lines.append("")
        lines.append(f"outputs: {verdict} (max |edlc - onnxruntime| {r.max_abs_diff:.3g}; "
                     f"rtol {RTOL:g}, atol {ATOL:g})")
        if r.ratio:
            lines.append(f"edlc / onnxruntime: {r.ratio:.2f}x median latency (lower is better)")
    for note in r.notes:
        lines.append(f"note: {note}")
    if r.profile is not None:
        lines.append("")
        lines.append(f"profile (edlc, per inference, mean of {r.profile_runs} runs through "
                     f"vm.set_instrument): {r.profile_ms:.3f} ms in VM calls")
        shown = r.profile if top is None else r.profile[:top]
        width = max([len(k.name) for k in shown] + [6])
        lines.append(f"  {'kernel':{width}} {'calls':>6} {'time ms':>10} {'share %':>8} "
                     f"{'GFLOP/s':>9}")
        for k in shown:
            calls = f"{k.calls:g}"
            g = "" if k.gflops is None else f"{k.gflops:.2f}"
            lines.append(f"  {k.name:{width}} {calls:>6} {k.ms:10.3f} {k.share:8.2f} {g:>9}")
        if len(shown) < len(r.profile):
            rest = r.profile[len(shown):]
            lines.append(f"  ... {len(rest)} more ({sum(k.share for k in rest):.2f}% of the time)")
    return "\n".join(lines)


def write_json(r: Report, path: str | os.PathLike) -> None:
    from edlc.artifact import atomic_file

    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(r.to_json(), indent=2) + "\n")
