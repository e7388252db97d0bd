"""Compile time, graph size, kernel count and latency of the zoo models on x86, untuned at
several optimization levels and tuned, side by side with onnxruntime.

    pip install -e '.[bench]'
    python benchmarks/zoo_vs_onnxruntime.py [--models resnet18,mobilenet_v2,bert] [--repeat 20 --rounds 10]
        [-O 0,2] [--tune-minutes 20 --records-dir records/ [--tune-level 3]] [--threads 2]
        [--json zoo.json] [--png zoo.png]

Everything runs on this machine in the same process with the same thread count; outputs are
checked against onnxruntime before timing. The timing interleaves the engines: --rounds rounds,
each running every edlc variant and onnxruntime a block of runs in turn, so that a slow spell of
a shared machine falls on all of them alike (on a noisy 2-core VM, the same artifact's median
moves by 30-50% between minutes; blocks timed minutes apart gave ratios off by as much).

Prints, per model and level: nodes of the imported graph -> after the passes, kernels in the built module, compile (and tuning) time, median
latency, and the ratio edlc / onnxruntime (lower is better). With --tune-minutes, each model
is tuned (`edlc.tune`, time-budgeted, resuming what --records-dir already holds) at
--tune-level, else at its fastest untuned level by a short interleaved timing (levels within
the noise of it may be picked either way), and compiled with its records: the "tuned" row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import edlc
from edlc.driver import import_model
from edlc.testing.reference import ort_session
from edlc.testing.zoo import SHAPES, ZOO, random_inputs


def ort_timer(session, inputs):
    """Seconds of n runs after a warm-up run, as `Module.time` times edlc."""
    def time_runs(n: int) -> list[float]:
        session.run(None, inputs)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            session.run(None, inputs)
            times.append(time.perf_counter() - t0)
        return times

    return time_runs


def interleaved(timers: dict, repeat: int, rounds: int) -> dict[str, list[float]]:
    """{name: seconds of each run}: `rounds` rounds, each timing a block of repeat / rounds
    runs of every engine in turn (a timer takes the block's size, returns its times)."""
    block = max(1, -(-repeat // rounds))
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, time_runs in timers.items():
            times[name] += time_runs(block)
    return times


def measure(name: str, model, inputs, ref, level: int, records: Path | None = None,
            tune_s: float = 0.0) -> tuple[dict, object]:
    """Compile one variant and check it against onnxruntime: (its row, its timer)."""
    passes: list = []
    t0 = time.perf_counter()
    module = edlc.compile(model, target="x86", input_shapes=SHAPES[name], opt_level=level,
                          records=records, pass_records=passes)
    compile_s = time.perf_counter() - t0
    got = module.run(inputs)
    diff = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    row = {"model": name, "variant": f"tuned-O{level}" if records else f"-O{level}", "level": level,
           "nodes": passes[-1].nodes_after if passes else None, "kernels": module.manifest["kernels"],
           "compile_s": compile_s, "tune_s": tune_s, "max_abs_diff": diff}
    return row, lambda n: module.time(inputs, repeat=n, warmup=1)


def tuned_row(name: str, model, inputs, ref, minutes: float, records_dir: Path,
              level: int = 2) -> tuple[dict, object]:
    """Tune at `level` (the benchmark passes the fastest untuned one), then compile with the
    records."""
    from edlc.tune import tune

    records = records_dir / f"{name}-O{level}"
    t0 = time.perf_counter()
    result = tune(model, target="x86", records=records, trials=100_000, input_shapes=SHAPES[name],
                  opt_level=level, time_budget_s=minutes * 60, progress=lambda msg: None)
    tune_s = time.perf_counter() - t0
    row, timer = measure(name, model, inputs, ref, level, records, tune_s)
    row["trials"] = result.trials_before + result.trials_run
    return row, timer


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(models), 4))
    width = 0.8 / len(variants)
    for k, variant in enumerate(variants):
        ratios = [next((r["ratio"] for r in rows if r["model"] == m and r["variant"] == variant), np.nan)
                  for m in models]
        ax.bar(np.arange(len(models)) + k * width, ratios, width, label=variant)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(len(models)) + width * (len(variants) - 1) / 2, models)
    ax.set_ylabel("latency / onnxruntime (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(sorted(ZOO)))
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per engine")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds the runs are split into")
    ap.add_argument("-O", dest="opt_levels", default="0,2", help="comma-separated levels")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads for both runtimes (default: all cores)")
    ap.add_argument("--tune-minutes", type=float, default=0, help="tune each model this long (0: no tuned row)")
    ap.add_argument("--tune-level", type=int, choices=range(4),
                    help="the level to tune at (default: the fastest of -O's, by a short timing)")
    ap.add_argument("--records-dir", type=Path, default=Path("benchmarks/records"),
                    help="tuning records, one directory per model (kept between runs)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--png", type=Path, help="draw the ratios here")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    levels = [int(v) for v in args.opt_levels.split(",")]
    print(f"x86, {args.threads} threads, median of {args.repeat} runs each, interleaved in "
          f"{args.rounds} rounds")
    print(f"{'model':14} {'variant':>8} {'nodes':>5} {'kernels':>7} {'compile s':>9} {'tune s':>7} "
          f"{'edlc ms':>10} {'ort ms':>9} {'ratio':>7}  max |diff|")
    rows = []
    for name in args.models.split(","):
        model = ZOO[name]()
        inputs = random_inputs(model, shapes=SHAPES[name])
        session = ort_session(model, threads=args.threads)
        ref = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
        found = [measure(name, model, inputs, ref, level) for level in levels]
        if args.tune_minutes > 0:
            best = args.tune_level
            if best is None:  # the fastest untuned level, by a short interleaved timing of its own
                quick = interleaved({r["variant"]: timer for r, timer in found}, 20, 10)
                best = min(found, key=lambda f: np.median(quick[f[0]["variant"]]))[0]["level"]
            found.append(tuned_row(name, model, inputs, ref, args.tune_minutes, args.records_dir, best))
        timers = {row["variant"]: timer for row, timer in found}
        timers["onnxruntime"] = ort_timer(session, inputs)
        times = interleaved(timers, args.repeat, args.rounds)
        ort_ms = float(np.median(times["onnxruntime"]) * 1e3)
        imported_nodes = len(import_model(model, SHAPES[name]).nodes)
        for row, _ in found:
            row.update(edlc_ms=float(np.median(times[row["variant"]]) * 1e3), ort_ms=ort_ms,
                       imported_nodes=imported_nodes)
            row["ratio"] = row["edlc_ms"] / ort_ms
            print(f"{name:14} {row['variant']:>8} {row['nodes'] or '-':>5} {row['kernels']:7} "
                  f"{row['compile_s']:9.1f} {row['tune_s']:7.0f} {row['edlc_ms']:10.2f} {ort_ms:9.2f} "
                  f"{row['ratio']:7.2f}x  {row['max_abs_diff']:.2e}", flush=True)
        rows.extend(row for row, _ in found)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "repeat": args.repeat,
                                         "rounds": args.rounds, "rows": rows}, indent=1))
    if args.png:
        chart(rows, args.png)


if __name__ == "__main__":
    main()
