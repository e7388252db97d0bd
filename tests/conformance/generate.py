"""Materialize ONNX's backend node tests (model.onnx + test_data_set_*/*.pb) on disk.

The onnx wheel no longer ships `onnx/backend/test/data/node/`; the cases are built in memory by
`onnx.backend.test.case.node`. We write them with onnx's own writer, restricted to node tests.
Expected outputs are ONNX's reference results.

    python tests/conformance/generate.py [OUT_DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import onnx

DEFAULT_DIR = Path(__file__).resolve().parent / ".data"
MARKER = "onnx_version.txt"


def generate(out_dir: Path = DEFAULT_DIR) -> Path:
    """Write the node cases under `out_dir/node` (cached per onnx version); return that dir."""
    out_dir = Path(out_dir)
    node_dir = out_dir / "node"
    marker = out_dir / MARKER
    if node_dir.is_dir() and marker.is_file() and marker.read_text().strip() == onnx.__version__:
        return node_dir

    import onnx.backend.test.cmd_tools as cmd_tools
    from onnx.backend.test import loader

    out_dir.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and swap it in, so an interrupted run leaves no half cache.
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=out_dir))
    saved = cmd_tools.model_test.collect_testcases
    cmd_tools.model_test.collect_testcases = loader.load_node_model_tests
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the case builders overflow on purpose
            cmd_tools.generate_data(argparse.Namespace(output=str(tmp)))
        marker.unlink(missing_ok=True)
        shutil.rmtree(node_dir, ignore_errors=True)
        os.replace(tmp / "node", node_dir)
        marker.write_text(onnx.__version__ + "\n")
    finally:
        cmd_tools.model_test.collect_testcases = saved
        shutil.rmtree(tmp, ignore_errors=True)
    return node_dir


if __name__ == "__main__":
    target = generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR)
    print(f"{sum(1 for _ in target.iterdir())} node cases in {target}")
