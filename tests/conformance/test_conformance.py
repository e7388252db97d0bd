"""ONNX backend node-test conformance of edlc: runs the whole suite (slow: minutes).

pytest -m conformance -s tests/conformance
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict

import pytest

from .generate import DEFAULT_DIR, generate
from .runner import counts, run_suite, summary

FLOOR = 1309  # raise as support grows; only goes up
WORKERS = int(os.environ.get("EDLC_CONFORMANCE_WORKERS", "2"))


@pytest.mark.conformance
@pytest.mark.timeout(0)  # each case has its own timeout in the runner
def test_node_conformance(record_testsuite_property: Callable[[str, object], None]) -> None:
    results = run_suite(generate(DEFAULT_DIR), workers=WORKERS, timeout=60)
    (DEFAULT_DIR / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print()
    print(summary(results))
    passed, failed = counts(results)
    record_testsuite_property("conformance_passed", passed)
    record_testsuite_property("conformance_failed", failed)
    assert passed >= FLOOR, f"{passed} cases passed, below the floor of {FLOOR}"


# Cases the optimizer rewrites: convs and pools (layout, fold-batchnorm, fuse), gemm/matmul
# epilogues (fuse), and the decomposed `_expanded` LayerNorm/GELU/softmax graphs (recognize).
OPTIMIZED_CASES = (r"^test_(conv|maxpool|averagepool|globalaveragepool|globalmaxpool|batchnorm|gemm|"
                   r"matmul|layer_normalization|gelu|softmax|relu|clip|hardswish|hardsigmoid|sigmoid|"
                   r"add|mul|transpose|reshape|identity|dropout|cast)")


@pytest.mark.conformance
@pytest.mark.timeout(0)
def test_optimization_levels_keep_every_passing_case() -> None:
    """Each case that passes unoptimized (-O0) also passes at -O3 (every pass, layout too)."""
    cases = generate(DEFAULT_DIR)
    passing = {}
    for backend in ("edlc-O0", "edlc-O3"):
        results = run_suite(cases, workers=WORKERS, timeout=60, filter=OPTIMIZED_CASES, backend=backend)
        passing[backend] = {r.name for r in results if r.status == "pass"}
    print(f"\n{len(passing['edlc-O0'])} cases pass at -O0, {len(passing['edlc-O3'])} at -O3")
    assert len(passing["edlc-O0"]) > 200
    assert passing["edlc-O0"] - passing["edlc-O3"] == set()
