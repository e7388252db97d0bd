"""Run ONNX backend node tests through edlc (or onnxruntime, for comparison).

    python tests/conformance/runner.py [CASES_DIR] [--filter REGEX] [--workers N] [--json OUT]
                                       [--backend edlc|onnxruntime] [--timeout S]

Each case runs in a worker process; a crash or a hang (killed at the timeout) costs that case
only. Integer inputs of rank <= 1 are bound as constants before compiling (edlc backend only),
as exported models carry shape-like inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import multiprocessing
import os
import queue
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

try:
    from .generate import DEFAULT_DIR, generate
except ImportError:  # run as a script
    from generate import DEFAULT_DIR, generate

RTOL, ATOL = 1e-3, 1e-4
BACKENDS = ("edlc", "edlc-O0", "edlc-O3", "onnxruntime")
REPO_ROOT = Path(__file__).resolve().parents[2]
_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


@dataclass
class CaseResult:
    """Outcome of one case. `error` is the exception class, or mismatch/timeout/crash/..."""

    name: str
    status: str  # "pass" | "fail" | "error"
    category: str  # the op under test
    message: str = ""
    seconds: float = 0.0
    error: str = ""
    frozen: list[str] = field(default_factory=list)  # inputs bound as constants


# ---------------------------------------------------------------- one case


def case_category(case_dir: Path, model: onnx.ModelProto | None = None) -> str:
    """The op a case tests: the node's op type; `_expanded` cases take their plain case's op."""
    case_dir = Path(case_dir)
    plain = case_dir.parent / _EXPANDED.sub("", case_dir.name)
    if plain != case_dir and (plain / "model.onnx").is_file():
        model = None
        case_dir = plain
    if model is None:
        model = onnx.load(str(case_dir / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    return ops[0] if len(ops) == 1 else (Counter(ops).most_common(1)[0][0] if ops else "?")


def _non_tensor(model: onnx.ModelProto) -> str | None:
    """Describe the first graph input/output that is not a plain tensor, if any."""
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in values:
            which = vi.type.WhichOneof("value")
            if which != "tensor_type":
                return f"{kind} '{vi.name}' is {which}"
    return None


def _read_tensors(files: Iterable[Path], values: Any) -> dict[str, np.ndarray]:
    """Load input_j.pb / output_j.pb as arrays keyed by the j-th graph input/output name."""
    arrays = {}
    for path, vi in zip(files, values, strict=False):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        arrays[vi.name] = numpy_helper.to_array(tensor)
    return arrays


def _indexed(data_dir: Path, prefix: str) -> list[Path]:
    files = data_dir.glob(f"{prefix}_*.pb")
    return sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))


_SUB_BYTE = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}


def _is_ml(dtype: np.dtype) -> bool:
    """bfloat16, float8, int4, ...: ml_dtypes types, which ORT's numpy bridge does not take."""
    return dtype.type.__module__ == "ml_dtypes"


def _width(dtype: np.dtype) -> int:
    return _SUB_BYTE.get(dtype.name, 8 * dtype.itemsize)


def _to_numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def compare(name: str, expected: np.ndarray, actual: Any) -> str | None:
    """None if `actual` matches; else a one-line reason (dtype, shape or values)."""
    actual = _to_numpy(actual)
    if actual.dtype != expected.dtype:
        return f"output '{name}': dtype {actual.dtype}, expected {expected.dtype}"
    if actual.shape != expected.shape:
        return f"output '{name}': shape {actual.shape}, expected {expected.shape}"
    if _is_ml(expected.dtype):  # bfloat16, float8, int4, ...: compare as float32
        actual, expected = actual.astype(np.float32), expected.astype(np.float32)
    if expected.dtype.kind in "fc":
        bad = ~np.isclose(actual, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    else:  # bool, integers, strings: exact
        bad = actual != expected
    if not bad.any():
        return None
    msg = f"output '{name}': {int(bad.sum())}/{bad.size} values differ"
    if expected.dtype.kind in "fc":
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(actual[bad].astype(np.complex128) - expected[bad])
        msg += f" (max abs diff {np.nanmax(diff) if np.isfinite(diff).any() else diff[0]:.3g})"
    return msg


def _run_edlc(model_path: Path, inputs: dict[str, np.ndarray], opt_level: int = 2) -> tuple[dict[str, Any], list[str]]:
    import edlc

    graph = edlc.load_onnx(str(model_path))
    frozen = [n for n, a in inputs.items() if a.dtype in (np.int32, np.int64) and a.ndim <= 1]
    for name in frozen:
        graph.freeze_input(name, inputs[name])
    module = edlc.compile(graph, target="x86", opt_level=opt_level)
    return module.run({n: a for n, a in inputs.items() if n not in frozen}), frozen


def _ort_input(ort: Any, array: np.ndarray) -> Any:
    """Numpy arrays go to ORT as they are; ml_dtypes arrays as OrtValues holding their bits."""
    if not _is_ml(array.dtype):
        return array
    raw = np.ascontiguousarray(array).view(np.uint8).ravel()
    if (width := _width(array.dtype)) < 8:  # ONNX packs sub-byte types, low bits first
        per = 8 // width
        codes = np.pad(raw & ((1 << width) - 1), (0, -raw.size % per)).reshape(-1, per)
        raw = np.bitwise_or.reduce(codes << (width * np.arange(per, dtype=np.uint8)), axis=1)
    c = ort.capi._pybind_state
    cpu = c.OrtDevice(c.OrtDevice.cpu(), c.OrtDevice.default_memory(), 0)
    onnx_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    value = c.OrtValue.ortvalue_from_shape_and_onnx_type(list(array.shape), onnx_type, cpu)
    ctypes.memmove(value.data_ptr(), raw.ctypes.data, min(raw.nbytes, value.tensor_size_in_bytes()))
    return ort.OrtValue(value)


def _ort_output(value: Any, dtype: np.dtype) -> np.ndarray:
    """An ORT output as numpy, with ml_dtypes outputs rebuilt from their bits."""
    if not _is_ml(dtype):
        return value.numpy()
    raw = bytes((ctypes.c_uint8 * value.tensor_size_in_bytes()).from_address(value.data_ptr()))
    codes = np.frombuffer(raw, dtype=f"u{max(1, _width(dtype) // 8)}")
    if (width := _width(dtype)) < 8:
        shifts = width * np.arange(8 // width, dtype=np.uint8)
        codes = ((codes[:, None] >> shifts) & ((1 << width) - 1)).ravel()
    shape = value.shape()
    return codes[: int(np.prod(shape))].view(dtype).reshape(shape)


def _run_onnxruntime(
    model_path: Path, inputs: dict[str, np.ndarray]
) -> tuple[dict[str, Any], list[str]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    feeds = {name: _ort_input(ort, a) for name, a in inputs.items()}
    graph = onnx.load(str(model_path), load_external_data=False).graph
    dtypes = {
        vi.name: helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        for vi in graph.output
    }
    names = [o.name for o in sess.get_outputs()]
    if not any(_is_ml(dtypes[n]) for n in names):
        return dict(zip(names, sess.run(names, feeds), strict=True)), []
    feeds = {
        n: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
        for n, v in feeds.items()
    }
    outs = sess.run_with_ort_values(names, feeds)
    return {n: _ort_output(v, dtypes[n]) for n, v in zip(names, outs, strict=True)}, []


_RUNNERS: dict[str, Callable[[Path, dict[str, np.ndarray]], tuple[dict[str, Any], list[str]]]] = {
    "edlc": _run_edlc,  # -O2, the default
    "edlc-O0": functools.partial(_run_edlc, opt_level=0),
    "edlc-O3": functools.partial(_run_edlc, opt_level=3),
    "onnxruntime": _run_onnxruntime,
}


def run_case(case_dir: Path | str, backend: str = "edlc") -> CaseResult:
    """Run every data set of one case dir and compare against ONNX's reference outputs."""
    case_dir = Path(case_dir)
    start = time.perf_counter()
    result = CaseResult(case_dir.name, "pass", "?")
    try:
        model = onnx.load(str(case_dir / "model.onnx"), load_external_data=False)
        result.category = case_category(case_dir, model)
        if reason := _non_tensor(model):
            result.status, result.error, result.message = "error", "unsupported-type", reason
            return result
        for data_dir in sorted(case_dir.glob("test_data_set_*")):
            inputs = _read_tensors(_indexed(data_dir, "input"), model.graph.input)
            expected = _read_tensors(_indexed(data_dir, "output"), model.graph.output)
            outputs, result.frozen = _RUNNERS[backend](case_dir / "model.onnx", inputs)
            for name, want in expected.items():
                reason = (
                    compare(name, want, outputs[name])
                    if name in outputs
                    else f"output '{name}' missing (got {sorted(outputs)})"
                )
                if reason:
                    result.status, result.error, result.message = "fail", "mismatch", reason
                    return result
    except Exception as e:  # noqa: BLE001 - every failure is a result
        lines = str(e).strip().splitlines()
        result.status, result.error = "error", type(e).__name__
        result.message = (lines[0] if lines else "")[:300]
    finally:
        result.seconds = round(time.perf_counter() - start, 3)
    return result


# ---------------------------------------------------------------- worker pool


def _serve(conn: Any, backend: str, log_path: str) -> None:
    """Worker loop: receive case dirs, send back result dicts. stdout/stderr go to log_path."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.environ.setdefault("TVM_NUM_THREADS", "1")  # tiny tensors; workers run side by side
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))  # an installed edlc wins; else the checkout's
    with contextlib.suppress(Exception):  # warm up; an import error shows in every case
        __import__(backend)
    conn.send("ready")
    while (case := conn.recv()) is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.ftruncate(1, 0)
        os.lseek(1, 0, os.SEEK_SET)
        conn.send(asdict(run_case(case, backend)))


class _Worker:
    """One worker process with a pipe and a log file; restartable."""

    def __init__(self, backend: str, log_path: str):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.log_path = log_path
        self.proc = ctx.Process(target=_serve, args=(child, backend, log_path), daemon=True)
        self.proc.start()
        child.close()
        self.tasks = 0

    def ready(self, timeout: float) -> bool:
        try:
            return self.conn.poll(timeout) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            return False

    def run(self, case: Path, timeout: float) -> dict[str, Any] | str:
        """The result dict, or "timeout" / "crash" after which this worker is dead."""
        self.tasks += 1
        try:
            self.conn.send(str(case))
            if not self.conn.poll(timeout):
                return "timeout"
            return self.conn.recv()
        except (EOFError, OSError):
            return "crash"

    def crash_reason(self) -> str:
        self.proc.join(5)
        code = self.proc.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
        try:
            tail = [ln for ln in Path(self.log_path).read_text(errors="replace").splitlines() if ln]
        except OSError:
            tail = []
        return f"worker died ({how})" + (f": {tail[-1][:200]}" if tail else "")

    def stop(self, kill: bool = False) -> None:
        if kill or not self.proc.is_alive():
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.proc.kill()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _drain(
    todo: queue.Queue[Path],
    backend: str,
    timeout: float,
    max_tasks: int,
    log_path: str,
    emit: Callable[[CaseResult], None],
) -> None:
    """One pool slot: run cases from `todo`, replacing its worker after a crash or hang."""
    worker: _Worker | None = None
    try:
        while True:
            try:
                case = todo.get_nowait()
            except queue.Empty:
                return
            if worker is not None and worker.tasks >= max_tasks:
                worker.stop()
                worker = None
            if worker is None:
                worker = _Worker(backend, log_path)
                if not worker.ready(max(timeout, 120)):
                    reason = worker.crash_reason()
                    emit(CaseResult(case.name, "error", case_category(case), reason, 0.0, "start"))
                    worker.stop(kill=True)
                    worker = None
                    continue
            start = time.perf_counter()
            got = worker.run(case, timeout)
            if isinstance(got, dict):
                emit(CaseResult(**got))
                continue
            seconds = round(time.perf_counter() - start, 3)
            if got == "timeout":
                worker.stop(kill=True)
                message = f"killed after {timeout:g} s"
            else:
                message = worker.crash_reason()
                worker.stop(kill=True)
            emit(CaseResult(case.name, "error", case_category(case), message, seconds, got))
            worker = None
    finally:
        if worker is not None:
            worker.stop()


def list_cases(cases_dir: Path, filter: str | None = None) -> list[Path]:
    """Case dirs (those holding a model.onnx) whose name matches the regex `filter`."""
    pattern = re.compile(filter) if filter else None
    return sorted(
        d
        for d in Path(cases_dir).iterdir()
        if (d / "model.onnx").is_file() and (pattern is None or pattern.search(d.name))
    )


def run_suite(
    cases_dir: Path | str,
    workers: int = 2,
    timeout: float = 60,
    filter: str | None = None,
    backend: str = "edlc",
    max_tasks: int = 200,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run the matching cases in `workers` processes (each recycled after `max_tasks` cases)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    todo: queue.Queue[Path] = queue.Queue()
    for case in list_cases(Path(cases_dir), filter):
        todo.put(case)
    results: list[CaseResult] = []
    lock = threading.Lock()

    def emit(result: CaseResult) -> None:
        with lock:
            results.append(result)
            if on_result:
                on_result(result)

    with tempfile.TemporaryDirectory(prefix="edlc-conformance-") as logs:
        slots = [
            threading.Thread(
                target=_drain,
                args=(todo, backend, timeout, max_tasks, f"{logs}/worker{i}.log", emit),
                daemon=True,
            )
            for i in range(max(1, workers))
        ]
        for t in slots:
            t.start()
        for t in slots:
            t.join()
    return sorted(results, key=lambda r: r.name)


# ---------------------------------------------------------------- reporting


def counts(results: list[CaseResult]) -> tuple[int, int]:
    """(passed, failed); errors count as failed."""
    passed = sum(r.status == "pass" for r in results)
    return passed, len(results) - passed


def summary(results: list[CaseResult], shown: int = 3) -> str:
    """Per-op pass/fail counts, failures grouped by op, and a last line `N passed, N failed`."""
    by_op: dict[str, list[CaseResult]] = defaultdict(list)
    for r in results:
        by_op[r.category].append(r)
    width = max([len(op) for op in by_op] + [2])
    lines = [f"{'op':<{width}}  pass  fail"]
    for op in sorted(by_op):
        p, f = counts(by_op[op])
        lines.append(f"{op:<{width}}  {p:>4}  {f:>4}")
    failing = {op: [r for r in rs if r.status != "pass"] for op, rs in sorted(by_op.items())}
    failing = {op: rs for op, rs in failing.items() if rs}
    if failing:
        lines += ["", "failures by op:"]
        for op, rs in failing.items():
            lines.append(f"  {op} ({len(rs)} failed)")
            lines += [f"    {r.name}: {r.error}: {r.message[:160]}" for r in rs[:shown]]
            if len(rs) > shown:
                lines.append(f"    ... {len(rs) - shown} more")
        kinds = Counter(r.error for r in results if r.status != "pass")
        lines += ["", "failure kinds: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common())]
    frozen = sum(bool(r.frozen) for r in results)
    seconds = sum(r.seconds for r in results)
    lines.append(f"{frozen} cases bound integer inputs as constants; {seconds:.0f} s case time")
    passed, failed = counts(results)
    lines.append(f"{passed} passed, {failed} failed")
    return "\n".join(lines)


def support_table(results: list[CaseResult], shown: int = 6) -> str:
    """Markdown table, one row per op: passed/total and (abbreviated) failing case names."""
    by_op: dict[str, list[CaseResult]] = defaultdict(list)
    for r in results:
        by_op[r.category].append(r)
    rows = ["| Op | Passed | Failing cases |", "|---|---|---|"]
    for op in sorted(by_op, key=str.lower):
        rs = by_op[op]
        bad = [r.name.removeprefix("test_") for r in rs if r.status != "pass"]
        names = ", ".join(f"`{n}`" for n in bad[:shown])
        if len(bad) > shown:
            names += f", +{len(bad) - shown} more"
        rows.append(f"| {op} | {len(rs) - len(bad)}/{len(rs)} | {names} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 0 if every selected case passed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases_dir", nargs="?", type=Path, help="default: generate into .data/")
    ap.add_argument("--filter", help="regex on case names (re.search)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60, help="seconds per case")
    ap.add_argument("--backend", choices=BACKENDS, default="edlc")
    ap.add_argument("--json", type=Path, help="write results here")
    ap.add_argument("--markdown", type=Path, help="write the support table here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each result")
    args = ap.parse_args(argv)

    cases_dir = args.cases_dir or generate(DEFAULT_DIR)
    start = time.perf_counter()

    def progress(r: CaseResult) -> None:
        if args.verbose:
            print(f"{r.status:5} {r.seconds:6.2f}s {r.name} {r.error} {r.message}", flush=True)

    results = run_suite(
        cases_dir, args.workers, args.timeout, args.filter, args.backend, on_result=progress
    )
    elapsed = time.perf_counter() - start
    if args.json:
        passed, failed = counts(results)
        args.json.write_text(
            json.dumps(
                {
                    "backend": args.backend,
                    "onnx": onnx.__version__,
                    "passed": passed,
                    "failed": failed,
                    "seconds": round(elapsed, 1),
                    "results": [asdict(r) for r in results],
                },
                indent=1,
            )
        )
    if args.markdown:
        args.markdown.write_text(support_table(results) + "\n")
    print(f"backend {args.backend}: {len(results)} cases in {elapsed:.0f} s wall")
    print(summary(results))
    return 0 if counts(results)[1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
