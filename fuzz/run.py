"""Long fuzz runs: random cases through edlc's importer, verifier, passes and export (and, for
one case in `--compile-every`, the build and a run) in a child process with a per-case time
limit, until the time budget is spent. Prints the cases tried, the EdlcError classes seen and
every finding (an exception other than EdlcError, a crash, a hang), with a reproducer file.

    python3 fuzz/run.py --minutes 30 [--seed N] [--corpus tests/conformance/.data/node] [--out DIR]

Exit status 1 if anything was found.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edlc.testing.fuzz.cases import KINDS, graph_case, random_case  # noqa: E402
from edlc.testing.fuzz.seeds import seed_models  # noqa: E402
from edlc.testing.fuzz.worker import Outcome, Worker  # noqa: E402


def _corpus(path: str | None, limit: int, rng: random.Random) -> dict[str, onnx.ModelProto]:
    """The in-memory seeds plus up to `limit` models found under `path` (e.g. the ONNX node
    tests that tests/conformance generates)."""
    seeds = seed_models()
    if path:
        files = sorted(Path(path).rglob("*.onnx"))
        for f in rng.sample(files, min(limit, len(files))):
            seeds[f.parent.name] = onnx.load(f)
    return seeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="time budget")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take")
    ap.add_argument("--compile-every", type=int, default=50,
                    help="build and run one valid random graph in this many cases (0: never)")
    ap.add_argument("--corpus", help="folder of .onnx models to mutate as well")
    ap.add_argument("--corpus-size", type=int, default=400)
    ap.add_argument("--out", default="fuzz/findings", help="where reproducers are written")
    args = ap.parse_args(argv)

    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    seeds = _corpus(args.corpus, args.corpus_size, rng)
    print(f"fuzz: seed {seed}, {len(seeds)} seed models, {args.minutes:g} min", flush=True)
    deadline = time.monotonic() + args.minutes * 60
    tried: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    findings: dict[str, tuple[Outcome, int]] = {}
    seen: Counter[str] = Counter()
    out = Path(args.out)
    t0 = time.monotonic()
    with Worker() as worker:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            build = args.compile_every and n % args.compile_every == 0
            kind = "compile" if build else rng.choice(KINDS)
            case_rng = random.Random(rng.randrange(2**63))
            case = graph_case(case_rng, compile=True) if build else random_case(case_rng, seeds, kind)
            result = worker.run(case, timeout=args.timeout * (10 if build else 1))
            tried[kind] += 1
            outcomes[result.detail if result.kind == "error" else result.kind] += 1
            seen[result.signature] += result.bad
            if result.bad and seen[result.signature] <= 3:  # a few reproducers per finding
                findings.setdefault(result.signature, (result, n))
                out.mkdir(parents=True, exist_ok=True)
                (out / f"case{n}.onnx").write_bytes(case.model)
                (out / f"case{n}.json").write_text(json.dumps(
                    {"label": case.label, "input_shapes": case.input_shapes, "compile": case.compile,
                     "outcome": result.kind, "detail": result.detail}, indent=1))
                print(f"\n[{n}] {result.kind}: {case.label}\n{result.detail}\n  -> {out / f'case{n}.onnx'}",
                      flush=True)
            if n % 500 == 0:
                print(f"fuzz: {n} cases, {time.monotonic() - t0:.0f} s, {len(findings)} finding(s)",
                      flush=True)
    print(f"\nfuzz: {n} cases in {time.monotonic() - t0:.0f} s (seed {seed})")
    print("  by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(tried.items())))
    print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    print(f"  findings: {len(findings)}")
    for sig, (_, case_no) in findings.items():
        print(f"    [{case_no}] {sig} ({seen[sig]} case(s))")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
