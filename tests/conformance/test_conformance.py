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

FLOOR = 1298  # raise as support grows; only goes up
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
