"""Tuning: MetaSchedule searches schedules for the model's kernels, its XGBoost cost model
ranking candidates, and writes every measured candidate to a JSON database (the records).

    result = edlc.tune("model.onnx", target="x86", trials=2000, records="records/")
    module = edlc.compile("model.onnx", records="records/")

Tasks are the kernels of the fused module (`edlc.lower.pipeline.fuse`), the same ones a later
`compile --records` looks up; identical kernels are one task. Each task is weighted by its
share of the model's work (FLOPs x calls), so the task scheduler spends trials where time goes.
Records are committed as they are measured: a killed run keeps them, and running the same
command again continues towards the same total of trials, the search starting from the best
records found so far.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edlc.errors import EdlcError, InputError, LoweringError, first_line
from edlc.records import (
    CHOICES,
    DEFAULT,
    count_records,
    forget_choices,
    locked,
    mean_seconds,
    record_key,
    repair,
    top_records,
    workload_hash,
    write_choices,
)

Progress = Callable[[str], None]


@dataclass
class TaskInfo:
    name: str
    calls: int
    flops: float
    weight: float
    trials: int = 0  # measured in this run
    best_us: float | None = None
    trials_before: int = 0  # records of this task from earlier runs
    batches: list = field(default_factory=list)  # best_us after each batch of this run

    def note(self, us: float | None) -> None:
        if us is not None:
            self.best_us = us if self.best_us is None else min(self.best_us, us)


@dataclass
class TuneResult:
    records: Path
    tasks: list[TaskInfo]
    trials_before: int  # records of this model already in the database when this run started
    trials_run: int
    seconds: float
    stopped: str = ""  # why tuning stopped early ("time budget", "interrupted"), if it did
    estimated_ms: float | None = None  # sum over tasks of best latency x calls

    def summary(self) -> str:
        lines = [f"{'task':40} {'calls':>5} {'share':>6} {'trials':>6} {'best us':>10}"]
        for t in sorted(self.tasks, key=lambda t: -t.weight):
            best = f"{t.best_us:10.1f}" if t.best_us is not None else f"{'-':>10}"
            lines.append(f"{t.name[:40]:40} {t.calls:5} {t.weight * 100:5.1f}% {t.trials:6} {best}")
        est = f"; kernels sum to {self.estimated_ms:.2f} ms" if self.estimated_ms else ""
        lines.append(f"{self.trials_run} trials in {self.seconds:.0f} s ({self.trials_before} records "
                     f"were already in {self.records}){est}" + (f"; stopped: {self.stopped}" if self.stopped else ""))
        return "\n".join(lines)


def parse_duration(text: str) -> float:
    """'90s', '10m', '1h', '45' (seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise InputError(f"time budget '{text}': expected a number with s, m or h (e.g. 10m)") from None


def parse_tracker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--rpc-tracker '{text}': expected HOST:PORT")
    return host, int(port)


def extract(model: Any, target: Any = "x86", input_shapes: Mapping[str, Sequence[int]] | None = None,
            opt_level: int = 2) -> tuple[Any, Any, list]:
    """(fused module, TVM target, MetaSchedule tasks) of a model, as compile would build it."""
    from tvm.s_tir import meta_schedule as ms

    from edlc.driver import import_model, optimize
    from edlc.errors import UnsupportedOpError
    from edlc.lower import lower, pipeline, unsupported_nodes
    from edlc.target import get_target

    tgt = get_target(target)
    graph = import_model(model, input_shapes)
    unsupported = unsupported_nodes(graph)
    if unsupported:
        raise UnsupportedOpError(unsupported)
    graph, _ = optimize(graph, opt_level, target=tgt)
    tvm_target = tgt.tvm_target()
    try:
        mod = pipeline.fuse(lower(graph, tgt).mod, tvm_target)
        tasks = ms.relax_integration.extract_tasks(mod, tvm_target)
    except EdlcError:
        raise
    except Exception as e:
        raise LoweringError(f"extracting tuning tasks failed: {first_line(e, 300)}") from e
    return mod, tvm_target, tasks


def _flops(task) -> float:
    from edlc.lower.pipeline import estimate_flops

    return estimate_flops(task.dispatched[0]["main"]) or 1.0


def _progress_callback(tasks: list[TaskInfo], total: int, start: float, progress: Progress):
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        """Counts trials, keeps each task's best latency and prints a progress line per batch."""

        def __init__(self):
            self.done = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            info = tasks[task_id]
            for r in runner_results:
                self.done += 1
                info.trials += 1
                info.note(_latency_us(r))
            info.batches.append(info.best_us)
            elapsed = time.monotonic() - start
            eta = elapsed / self.done * (total - self.done) if self.done else 0.0
            progress(f"tuning: {self.done}/{total} trials, task {task_id + 1}/{len(tasks)} "
                     f"{info.name[:32]}, best {info.best_us or float('nan'):.1f} us, "
                     f"model ~{_estimate_ms(tasks):.2f} ms, {elapsed:.0f} s elapsed, ETA {eta:.0f} s")

    return _Progress()


def _latency_us(runner_result) -> float | None:
    return _mean_us(runner_result.run_secs) if runner_result.error_msg is None else None


def _mean_us(run_secs) -> float | None:
    mean = mean_seconds(run_secs)
    return None if mean is None else mean * 1e6


def _estimate_ms(tasks: list[TaskInfo]) -> float:
    return sum((t.best_us or 0) * t.calls for t in tasks) / 1e3


class _Policy:
    """Which task gets the next batch. First one batch per task, heaviest first, for the tasks
    that fit in half the trials (the rest keep the default schedules); then the task whose
    time in the model (best latency x calls) is largest, discounted when its last two
    batches stopped improving it. Returns -1 once the time budget is spent."""

    def __init__(self, tasks: list[TaskInfo], batch: int, trials: int, start: float,
                 budget_s: float | None, stop: list[str]):
        self.tasks, self.start, self.budget_s, self.stop = tasks, start, budget_s, stop
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i].weight)
        fresh = [i for i in order if tasks[i].trials_before < batch and tasks[i].weight >= 0.002]
        self.first_round = fresh[:max(1, trials // 2 // batch)]
        self.picked = 0

    def __call__(self, terminated: list[bool]) -> int:
        if self.budget_s is not None and time.monotonic() - self.start > self.budget_s:
            if not self.stop:
                self.stop.append("time budget")
            return -1
        while self.first_round:
            i = self.first_round.pop(0)
            if not terminated[i]:
                return i
        live = [i for i in range(len(self.tasks)) if not terminated[i]]
        return max(live, key=lambda i: self._score(self.tasks[i]), default=-1)

    @staticmethod
    def _score(t: TaskInfo) -> float:
        if t.best_us is None:
            return t.weight * 1e9  # not measured yet (or nothing valid): worth a batch
        history = [b for b in t.batches if b is not None]
        gain = 1.0
        if len(history) >= 3:
            gain = max((history[-3] - history[-1]) / history[-3], 0.05)
        return t.best_us * t.calls * gain


def _batch_scheduler(policy: _Policy):
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _OneBatchAtATime(ms.task_scheduler.PyTaskScheduler):
        """MetaSchedule's own schedulers send a batch of every task to the builder before they
        join any, so nothing is committed until every task was built once (0 records after 14
        minutes of ResNet-18) and no time budget can act. This one joins each batch before it
        picks the next: records are committed, progress shown and the budget checked per batch."""

        def __init__(self):
            super().__init__()
            self.running = -1

        def next_task_id(self) -> int:
            records = self._outer().tasks_
            if self.running >= 0 and not records[self.running].is_terminated:
                self.join_running_task(self.running)
            self.running = policy([bool(r.is_terminated) for r in records])
            return self.running

    return _OneBatchAtATime()


def _batch_size(trials_per_iter: int | None, remaining: int, n_tasks: int) -> int:
    """Candidates per batch: small enough that every task gets a few batches in the trials,
    large enough to pay for the search that precedes each batch (~30 s for a conv on 2 cores
    at population 512)."""
    if trials_per_iter is not None:
        return max(1, min(trials_per_iter, remaining))
    return max(1, min(64, max(16, remaining // (4 * n_tasks)), remaining))


def _seed_default_schedules(contexts, infos: list[TaskInfo], database, builder, runner, target,
                            limit: int = 0) -> int:
    """Measure edlc's default schedule of every task the database has no record of, then, up
    to `limit` candidates in all, its variants (other register tiles, padding per tile or once:
    `edlc.schedules.schedule_variants`), heaviest tasks first; commit each as a record. The
    search starts from them, and tuned kernels never lose to untuned ones."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from edlc.schedules import schedule_variants
    from edlc.schedules.analysis import cpu_of

    cpu = cpu_of(target)
    if cpu is None:
        return 0
    fresh = [i for i in range(len(contexts)) if not infos[i].trials_before]
    candidates = [(i, _default_schedule(contexts[i].mod, cpu)) for i in fresh]
    for i in sorted(fresh, key=lambda i: -infos[i].weight):
        func = contexts[i].mod["main"]
        for variant in schedule_variants(func, cpu):
            if len(candidates) >= limit:
                break
            candidates.append((i, _default_schedule(contexts[i].mod, cpu, variant)))
    seeds, seen = [], set()
    for i, sch in candidates:
        key = (i, tvm_ffi.structural_hash(sch.mod)) if sch is not None else None
        if sch is not None and key not in seen:  # a variant may come out as another one
            seen.add(key)
            seeds.append((i, sch, _measured_args(sch)))
    if not seeds:
        return 0
    (runs,) = _build_and_run([(sch, args) for _, sch, args in seeds], builder, runner, target, rounds=1)
    committed = 0
    for (i, sch, args), run_secs in zip(seeds, runs):
        us = _mean_us(run_secs)
        if us is None:
            continue
        workload = database.commit_workload(contexts[i].mod)
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, workload, [float(s) for s in run_secs], target, args))
        infos[i].trials += 1
        infos[i].note(us)
        committed += 1
    return committed


def _default_schedule(mod, cpu, variant=None):
    """edlc's default schedule of a task (or a variant of it); None where there is none (the
    search, or the records, then compete alone)."""
    from edlc.schedules import default_schedule

    try:
        return default_schedule(mod["main"], cpu, variant)
    except Exception:  # noqa: BLE001  no such schedule
        return None


def _measured_args(sch):
    """The arguments of the kernel as measured: a weight the schedule re-lays arrives re-laid
    (the re-layout runs when compiling), as MetaSchedule measures candidates."""
    from tvm.s_tir import meta_schedule as ms

    return ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)


def _build_and_run(candidates: list, builder, runner, target, rounds: int) -> list[list]:
    """Build (schedule, args) candidates once and run them all `rounds` times, each round the
    whole list in turn; returns per round, per candidate, its run times in seconds ([] where it
    failed to build or run). The built files are removed."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch, _ in candidates])
    device = "cpu" if target.kind.name == "llvm" else target.kind.name
    ok = [k for k, b in enumerate(built) if b.error_msg is None]
    inputs = [ms.runner.RunnerInput(built[k].artifact_path, device, candidates[k][1]) for k in ok]
    out = []
    try:
        for _ in range(rounds):
            secs: list[list] = [[] for _ in candidates]
            for k, future in zip(ok, runner.run(inputs)):
                result = future.result()
                if result.error_msg is None:
                    secs[k] = [float(s) for s in result.run_secs or []]
            out.append(secs)
    finally:
        for b in built:
            if b.artifact_path:
                Path(b.artifact_path).unlink(missing_ok=True)
    return out


def _design_space(target):
    """MetaSchedule's design space, its schedule rules applied post-order, with its default
    postprocessors but RewriteLayout on CPUs: that one fails (a check inside TVM, raised, not
    reported) on edlc's schedules, which re-lay their weights themselves, and the search
    evolves from those once they are measured; a raise there ends the whole search."""
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name != "llvm":
        return "post-order-apply"
    postprocs = [p for p in ms.postproc.Postproc.create("llvm") if type(p).__name__ != "RewriteLayout"]
    return ms.space_generator.PostOrderApply(postprocs=postprocs)


def _known_best(contexts, infos: list[TaskInfo], database) -> None:
    """Each task's records and best latency from earlier runs (what a resumed run builds on)."""
    for ctx, info in zip(contexts, infos):
        if not database.has_workload(ctx.mod):
            continue
        top = database.get_top_k(database.commit_workload(ctx.mod), 1 << 30)
        info.trials_before = len(top)
        if top:
            info.best_us = _mean_us(top[0].run_secs)


def tune(model: Any, target: Any = "x86", *, records: str | os.PathLike, trials: int = 1000,
         input_shapes: Mapping[str, Sequence[int]] | None = None, opt_level: int = 2,
         time_budget_s: float | None = None, rpc_tracker: str | None = None,
         rpc_key: str | None = None, trials_per_iter: int | None = None, population: int = 512,
         progress: Progress | None = None,
         target_options: Mapping[str, Any] | None = None) -> TuneResult:
    """Tune a model's kernels until `records` holds `trials` measured candidates (counting
    those of earlier runs) or the time budget is spent. The first measured candidate of each
    kernel is edlc's default schedule. A target whose code does not run in this process (arm:
    only emulated here, and QEMU's timings are not the board's) is measured on the board,
    through an RPC tracker; its candidates are linked by the target's cross compiler."""
    from edlc.target import get_target

    if trials < 1:
        raise InputError(f"--trials must be at least 1, got {trials}")
    progress = progress or (lambda msg: print(msg, file=sys.stderr))
    records = Path(records)
    tgt = get_target(target, **dict(target_options or {}))
    if tgt.mcu is not None:
        raise InputError(f"target '{tgt.name}' is not tuned: a microcontroller has no RPC server to "
                         "time candidates on (its kernels get edlc's default schedules)")
    if tgt.runner != "local" and rpc_tracker is None:
        raise InputError(f"target '{tgt.name}' runs here only under {tgt.runner}, whose timings are "
                         "not the board's: tune on the board with --rpc-tracker HOST:PORT --rpc-key "
                         "KEY (an RPC server on the board registered with the tracker)")
    if rpc_tracker is not None:
        check_tracker(rpc_tracker, rpc_key)  # fail in seconds, not after extracting tasks
    _, tvm_target, extracted = extract(model, tgt, input_shapes, opt_level)
    if not extracted:
        raise InputError("the model has no kernels to tune")
    with locked(records, progress):
        check = repair(records)
        if check.dropped:
            progress(check.report(records) + f"; the originals are kept as {records}/*.corrupt")
        return _tune_tasks(extracted, tvm_target, records, trials, time_budget_s, rpc_tracker,
                           rpc_key, trials_per_iter, population, progress, tgt.cc)


def _tune_tasks(extracted, tvm_target, records: Path, trials: int, time_budget_s: float | None,
                rpc_tracker: str | None, rpc_key: str | None, trials_per_iter: int | None,
                population: int, progress: Progress, cc: str | None = None) -> TuneResult:
    from tvm.s_tir import meta_schedule as ms

    load_tensor_intrinsics(_intrinsic_family(tvm_target))
    contexts, calls = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted_tasks=extracted, work_dir=str(records), space=_design_space(tvm_target),
        strategy=ms.search_strategy.EvolutionarySearch(population_size=population))
    flops = [_flops(t) for t in extracted]
    work = [c * f for c, f in zip(calls, flops)]
    total_work = sum(work) or 1.0
    infos = [TaskInfo(t.task_name, int(c), f, w / total_work)
             for t, c, f, w in zip(extracted, calls, flops, work)]
    database = ms.database.JSONDatabase(work_dir=str(records))
    _known_best(contexts, infos, database)
    before = sum(i.trials_before for i in infos)  # this model's records (a directory may hold others')
    result = TuneResult(records, infos, before, 0, 0.0)
    if trials - before <= 0:
        progress(f"tuning: {records} already holds {before} records of this model (--trials {trials}); "
                 "nothing to do")
        return _finish(result, [], time.monotonic())
    stop: list[str] = []
    start = time.monotonic()
    hashes = [workload_hash(ctx.mod) for ctx in contexts]  # what the choices are keyed by
    forget_choices(records, hashes)
    cores = int(tvm_target.attrs.get("num-cores", os.cpu_count() or 1)) if hasattr(tvm_target, "attrs") else 1
    builder = candidate_builder(cc)
    runner = _runner(rpc_tracker, rpc_key)
    try:
        seeded = _seed_default_schedules(contexts, infos, database, builder, runner, tvm_target,
                                         limit=trials - before)
        if seeded:
            progress(f"tuning: measured {seeded} default schedules and their variants, "
                     f"model ~{_estimate_ms(infos):.2f} ms")
        remaining = trials - before - seeded
        searchable = _searchable(contexts, infos, progress) if remaining > 0 else []
        if searchable:
            searched = [infos[k] for k in searchable]  # the same TaskInfos: the result sees them
            batch = _batch_size(trials_per_iter, remaining, len(searched))
            progress(f"tuning {len(searched)} tasks, {remaining} trials in batches of {batch} "
                     f"({before + seeded} records of this model in {records})")
            search_s = None if time_budget_s is None else time_budget_s * (1 - CHECK_SHARE)
            policy = _Policy(searched, batch, remaining, start, search_s, stop)
            ms.tune_tasks(
                tasks=[contexts[k] for k in searchable],
                task_weights=[max(i.weight, 1e-6) for i in searched],
                work_dir=str(records),
                max_trials_global=remaining,
                num_trials_per_iter=batch,
                builder=builder,
                runner=runner,
                database=database,
                cost_model=ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                                                  adaptive_training=True, num_tuning_cores=cores),
                measure_callbacks=[ms.measure_callback.AddToDatabase(),
                                   ms.measure_callback.RemoveBuildArtifact(),
                                   ms.measure_callback.UpdateCostModel(),
                                   _progress_callback(searched, remaining, start, progress)],
                task_scheduler=_batch_scheduler(policy),
            )
        _closing_check(contexts, hashes, infos, records, database, builder, runner, tvm_target,
                       progress)
    except KeyboardInterrupt:
        stop.append("interrupted")
    finally:
        _shutdown(runner)
    return _finish(result, stop, start)


CHECK_SHARE = 0.15  # of a time budget, kept for the closing check
CHECK_TOP = 3  # search records of each kernel measured again by the closing check, besides edlc's own
CHECK_ROUNDS = 5


def _closing_check(contexts, hashes: list[str], infos: list[TaskInfo], records: Path, database,
                   builder, runner, target, progress: Progress) -> None:
    """Measure each tuned kernel's fastest records, edlc's default schedule and its variants
    again, side by side in rounds, and write the winners as the directory's choices.

    Why: the search measures a candidate once. On a machine whose speed drifts by tens of percent
    from one minute to the next, the fastest of a thousand such measurements is mostly one taken
    in a fast moment: on BERT the chosen records looked 1.3-1.5x faster than the default schedule
    and ran 1.4x slower in the model. Measured together, they lose."""
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from edlc.schedules.analysis import cpu_of

    try:
        tops = top_records(records, CHECK_TOP)
        cpu = cpu_of(target)
        entries = []  # (task index, label, schedule, args)
        for i, ctx in enumerate(contexts):
            workload = database.commit_workload(ctx.mod)
            candidates = {}  # structural hash -> (label, schedule, args): the default is often a record
            for body in tops.get(hashes[i], []):
                record = ms.database.TuningRecord.from_json(body, workload)
                sch = s_tir.Schedule(ctx.mod)
                record.trace.apply_to_schedule(sch, remove_postproc=False)
                candidates.setdefault(tvm_ffi.structural_hash(sch.mod), (record_key(body), sch, record.args_info))
            sch = _default_schedule(ctx.mod, cpu) if cpu is not None else None
            if sch is not None:
                candidates.setdefault(tvm_ffi.structural_hash(sch.mod), (DEFAULT, sch, _measured_args(sch)))
            if len(candidates) > 1:
                entries += [(i, *c) for c in candidates.values()]
        if not entries:
            return
        choices = _measure_side_by_side(entries, hashes, infos, builder, runner, target, progress)
        write_choices(records, choices)
        switched = sum(1 for c in choices.values() if c["record"] != c["search_best"])
        progress(f"tuning: closing check of {len(choices)} kernels: {switched} keep another schedule than "
                 f"the search's fastest record ({CHOICES} in {records})")
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001  the records stand; compile takes each kernel's fastest
        progress(f"tuning: the closing check failed ({first_line(e, 200)}); compile will use each "
                 "kernel's fastest record")


def _measure_side_by_side(entries: list, hashes: list[str], infos: list[TaskInfo], builder,
                          runner, target, progress: Progress) -> dict[str, dict]:
    """Build every entry once, time them all in CHECK_ROUNDS interleaved rounds; per kernel, the
    entry with the lowest median wins. Returns the choices, keyed by workload hash."""
    from statistics import median

    progress(f"tuning: closing check: measuring {len(entries)} schedules again, {CHECK_ROUNDS} rounds")
    rounds = _build_and_run([(sch, args) for _, _, sch, args in entries], builder, runner, target,
                            rounds=CHECK_ROUNDS)
    best: dict[int, tuple[float, str]] = {}
    measured: dict[int, dict[str, float]] = {}
    for k in range(len(entries)):
        us = [median(secs[k]) * 1e6 for secs in rounds if mean_seconds(secs[k]) is not None]
        if not us:
            continue
        task, label = entries[k][0], entries[k][1]
        m = median(us)
        measured.setdefault(task, {})[label] = round(m, 2)
        if task not in best or m < best[task][0]:
            best[task] = (m, label)
    choices = {}
    for task, (us, label) in best.items():
        first = next(lbl for t, lbl, _, _ in entries if t == task)
        choices[hashes[task]] = {"kernel": infos[task].name, "record": label, "search_best": first,
                                 "us": round(us, 2), "measured_us": measured[task]}
    return choices


def _searchable(contexts, infos: list[TaskInfo], progress: Progress) -> list[int]:
    """Indices of the tasks there is something to search for. Where a rule of MetaSchedule
    raises (its reverse_compute_at on edlc's fused attention kernel), TVM's task scheduler
    would end the whole run. Where the design space has no decision to sample (Winograd's
    transforms: inlined, parallel, vectorized, nothing to choose), the evolutionary search
    spins for many minutes trying to mutate what has no mutations. Such tasks keep their
    measured default schedule."""
    ok = []
    for k, ctx in enumerate(contexts):
        try:
            spaces = ctx.generate_design_space()
        except Exception as e:  # noqa: BLE001  reported, and the task is left out of the search
            progress(f"tuning: {infos[k].name}: MetaSchedule's rules do not apply "
                     f"({first_line(e, 120)}); it keeps its default schedule")
            continue
        if not any(len(sch.trace.decisions) for sch in spaces):
            progress(f"tuning: {infos[k].name}: its design space has no choices to search; "
                     "it keeps its default schedule")
            continue
        ok.append(k)
    return ok


def _finish(result: TuneResult, stop: list[str], start: float) -> TuneResult:
    result.trials_run = sum(i.trials for i in result.tasks)
    result.seconds = time.monotonic() - start
    result.stopped = stop[0] if stop else ""
    if all(i.best_us is not None for i in result.tasks):
        result.estimated_ms = _estimate_ms(result.tasks)
    if result.stopped == "interrupted":
        raise TuningInterrupted(result)
    return result


class TuningInterrupted(EdlcError):
    """Ctrl-C during tuning: the records measured so far are kept."""

    def __init__(self, result: TuneResult):
        super().__init__(f"tuning interrupted: {count_records(result.records)} records kept in "
                         f"{result.records}; run the same command to resume")
        self.result = result


def load_tensor_intrinsics(arch: str = "x86") -> None:
    """Register the tensor intrinsics of one CPU family only. `import tvm.s_tir.tensor_intrin`
    registers every family (CUDA alone takes ~30 s); MetaSchedule imports it when a tuning
    context is made and again in each builder process pool (restarted every round), which
    made a 2-trial tuning run take minutes. The package is entered without its __init__."""
    import importlib
    import importlib.util
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules[name] = package
    importlib.import_module(f"{name}.{arch}")


def build_candidate(mod, target, params):
    """MetaSchedule's default build, with only the host's tensor intrinsics registered."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    load_tensor_intrinsics(_intrinsic_family(target))
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def candidate_builder(cc: str | None = None):
    """MetaSchedule's builder for the candidates: built with only the target's tensor
    intrinsics, and, given a cross compiler `cc` (arm: aarch64-linux-gnu-gcc), exported as a
    shared object it links, which the board's RPC server loads without a compiler of its own."""
    from tvm.s_tir import meta_schedule as ms

    export = functools.partial(export_candidate, cc=cc) if cc else None
    return ms.builder.LocalBuilder(timeout_sec=120, f_build=build_candidate, f_export=export)


def export_candidate(mod, cc: str) -> str:
    """A built candidate as a shared object linked by `cc`; returns its path."""
    path = os.path.join(tempfile.mkdtemp(prefix="edlc-candidate-"), "candidate.so")
    mod.export_library(path, cc=cc)
    return path


def check_tracker(rpc_tracker: str, rpc_key: str | None, timeout_s: float = 5.0) -> None:
    """Raise a TargetError unless the tracker at HOST:PORT answers within `timeout_s` and an
    RPC server has registered with it under `rpc_key` (TVM's own client retries for a minute
    and then fails candidate by candidate)."""
    import json
    import socket
    import struct

    from tvm.rpc import base

    from edlc.errors import TargetError

    if not rpc_key:
        raise InputError("--rpc-tracker needs --rpc-key KEY (the key the servers registered with)")
    host, port = parse_tracker(rpc_tracker)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                raise TargetError(f"{host}:{port} is not a TVM RPC tracker")
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            code, summary = base.recvjson(sock)
    except TargetError:
        raise
    except (OSError, RuntimeError, ValueError, struct.error, json.JSONDecodeError) as e:
        raise TargetError(f"cannot reach the RPC tracker at {host}:{port} ({first_line(e)}); start it "
                          "with `python -m tvm.exec.rpc_tracker --port PORT`") from e
    if code != base.TrackerCode.SUCCESS:
        raise TargetError(f"the RPC tracker at {host}:{port} refused its summary ({summary})")
    keys = {s.get("key", "").partition(":")[2] for s in summary.get("server_info", [])}
    if rpc_key not in keys:
        known = ", ".join(sorted(k for k in keys if k)) or "none"
        raise TargetError(f"no RPC server has registered with the tracker at {host}:{port} under key "
                          f"'{rpc_key}' (keys there: {known}); on the board run `python -m "
                          f"tvm.exec.rpc_server --tracker {host}:{port} --key {rpc_key}`")


def _shutdown(runner) -> None:
    pool = getattr(runner, "pool", None)  # its worker processes outlive the run otherwise
    if pool is not None:
        pool.shutdown()


def _intrinsic_family(target) -> str:
    if target.kind.name == "cuda":
        return "cuda"
    triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
    return "arm_cpu" if triple.startswith(("aarch64", "arm", "thumb")) else "x86"


def _runner(rpc_tracker: str | None, rpc_key: str | None):
    """Each candidate runs 10 times, its weights and output flushed from the caches before each
    run (the input stays: in a model the kernel before wrote it). Measured warm, the search
    picked schedules that beat the default schedule by 1.3x warm and lost to it by 1.4x in the
    model, where the other kernels evict the weights (MobileNetV2's project convs and BERT's
    dense layers: 1.5-2x slower cold than warm)."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0,
                                          enable_cpu_cache_flush=True)
    if rpc_tracker is None:
        if rpc_key is not None:
            raise InputError("--rpc-key needs --rpc-tracker HOST:PORT")
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
    if not rpc_key:
        raise InputError("--rpc-tracker needs --rpc-key KEY (the key the servers registered with)")
    host, port = parse_tracker(rpc_tracker)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                 session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator)


__all__ = ["TaskInfo", "TuneResult", "TuningInterrupted", "candidate_builder", "check_tracker",
           "count_records", "extract", "parse_duration", "tune"]
