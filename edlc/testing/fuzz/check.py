"""One fuzz case through edlc, in this process: the property every case must keep is that the
only exception that leaves edlc is an EdlcError, and that nothing outside the model's folder is
read. `check_case` reports which EdlcError (or none) and raises anything else.

The case directory holds, besides the model, a weights file the model may point at, a secret
file one level up, and a symlink from inside the folder to that secret; external data that
reaches the secret's bytes is a finding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edlc.errors import EdlcError

MODEL_FILE = "model.onnx"
SECRET = b"EDLC-FUZZ-SECRET-0123456789abcdef" * 4
WEIGHTS = np.arange(64, dtype=np.float32).tobytes()


@dataclass
class Case:
    """What the worker runs: model bytes, concrete shapes for symbolic inputs, whether to build
    it (slow: seconds) and run the result on random inputs."""

    model: bytes
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    compile: bool = False
    label: str = ""


class Escape(Exception):
    """A finding that is not an exception of edlc's (data read from outside the folder)."""


def prepare_folder(root: Path) -> Path:
    """The model's folder inside `root`, with the files external data may (try to) reach."""
    folder = root / "model"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(WEIGHTS)
    (root / "secret.bin").write_bytes(SECRET)
    for link, target in (("link.bin", "../secret.bin"), ("dirlink", "..")):
        if not (folder / link).is_symlink():
            os.symlink(target, folder / link)
    return folder


def _leaks_secret(graph) -> bool:
    probe = SECRET[:16]
    values = [v for node in graph.all_nodes() for v in node.inputs] + list(graph.outputs)
    return any(v is not None and v.is_constant and probe in np.ascontiguousarray(v.const).tobytes()
               for v in values)


def check_case(case: Case, folder: Path) -> str:
    """Run the case; returns "ok" or the name of the EdlcError subclass it raised. Any other
    exception propagates: that is what the fuzzer looks for."""
    import edlc
    from edlc.driver import optimize
    from edlc.lower import unsupported_nodes

    path = folder / MODEL_FILE
    path.write_bytes(case.model)
    try:
        graph = edlc.load_onnx(path)
        if _leaks_secret(graph):
            raise Escape("external data was read from outside the model's folder")
        graph.verify()
        unsupported = unsupported_nodes(graph)
        graph, _ = optimize(graph, opt_level=3, verify_each=True)
        graph.to_onnx()
        if case.compile and not unsupported:
            _compile_and_run(path, case)
    except EdlcError as e:
        return type(e).__name__
    return "ok"


def _compile_and_run(path: Path, case: Case) -> None:
    import edlc
    from edlc.bench import random_inputs

    module = edlc.compile(path, input_shapes=case.input_shapes or None, opt_level=2)
    specs = module.inputs
    if all(s["shape"] is not None and np.prod([d if isinstance(d, int) else 1 for d in s["shape"]]) < 2**22
           for s in specs):
        module.run(random_inputs(specs))
