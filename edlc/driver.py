"""`edlc.compile`: import -> passes -> lower -> build, each step a plain function call.

Every user-caused failure surfaces as an EdlcError before any artifact is written; TVM's own
exceptions are caught at the lowering/build boundary and re-raised naming the node or step.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

import edlc
from edlc.errors import EdlcError, LoweringError, ModelError, ShapeError, UnsupportedOpError
from edlc.frontend.onnx import load_model_proto, load_onnx
from edlc.ir.graph import Graph
from edlc.ir.types import TensorType
from edlc.lower import LoweredModel, count_kernels, lower, pipeline, unsupported_nodes
from edlc.pass_manager import PassManager
from edlc.runtime import Module
from edlc.target import Target, get_target

ModelLike = str | os.PathLike | onnx.ModelProto | Graph


def model_digest(model: ModelLike) -> tuple[str, str]:
    """(name, sha256) of the model as given: file bytes, serialized proto or exported graph."""
    if isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelError(f"{model}: cannot read the model file ({e.strerror})") from e
        return os.path.splitext(os.path.basename(model))[0], hashlib.sha256(data).hexdigest()
    if isinstance(model, Graph):
        return model.name, hashlib.sha256(model.to_onnx().SerializeToString()).hexdigest()
    return model.graph.name or "model", hashlib.sha256(model.SerializeToString()).hexdigest()


def bind_graph_shapes(graph: Graph, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Bind symbolic input dims of an already-imported graph; types are re-inferred by the
    fold-constants pass that follows."""
    for name, shape in input_shapes.items():
        v = graph.input(name) if any(i.name == name for i in graph.inputs) else None
        if v is None:
            raise ShapeError(f"--input-shape names '{name}', but the model's inputs are {[i.name for i in graph.inputs]}")
        old = v.type
        if old.shape is not None and len(old.shape) != len(shape):
            raise ShapeError(f"input '{name}' has rank {len(old.shape)} {list(old.shape)}, got shape {list(shape)}")
        if old.shape is not None:
            for d, s in zip(old.shape, shape):
                if isinstance(d, int) and d != s:
                    raise ShapeError(f"input '{name}' has fixed dim {d}, cannot bind it to {s}")
        v.type = TensorType(tuple(int(s) for s in shape), old.dtype)
    for node in graph.nodes:  # symbolic types downstream are stale: let inference redo them
        for out in node.outputs:
            if out.type is not None and not out.type.is_static:
                out.type = TensorType(None, out.type.dtype)


def import_model(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    if isinstance(model, Graph):
        graph = model.copy()
        if input_shapes:
            bind_graph_shapes(graph, input_shapes)
        return graph
    if isinstance(model, (str, os.PathLike)):
        model = load_model_proto(model)
    if not isinstance(model, onnx.ModelProto):
        raise EdlcError(f"model must be a path, an onnx.ModelProto or an edlc.Graph, not {type(model).__name__}")
    return load_onnx(model, input_shapes)


def optimize(graph: Graph, opt_level: int = 2, passes: Sequence[str] | None = None,
             disabled: Iterable[str] = (), verify_each: bool = False,
             print_after: Iterable[str] = (),
             records: list | None = None) -> tuple[Graph, PassManager]:
    """Run the pass pipeline for `opt_level` (or an explicit list) on the graph. `records`, if
    given, receives a PassRecord per pass run as it finishes (kept even if a later pass fails)."""
    options: dict[str, Any] = {"print_after": print_after, "disabled": disabled}
    if verify_each:
        options["verify_each"] = True
    if records is not None:
        options["records"] = records
    pm = PassManager(passes, **options) if passes is not None else \
        PassManager.for_opt_level(opt_level, **options)
    return pm.run(graph), pm


def build(lowered: LoweredModel, target: Target, opt_level: int = 2,
          records: str | os.PathLike | None = None) -> tuple[Any, int, dict[str, Any] | None]:
    """Compile a lowered model with TVM for the target; returns the TVM executable, the number
    of kernels (PrimFuncs) it holds, and, with tuning `records`, which kernels had one."""
    import tvm

    try:
        tgt = target.tvm_target()
        with tvm.transform.PassContext(opt_level=3 if opt_level > 0 else 0):
            mod = pipeline.fuse(lowered.mod, tgt)
            tuning = None
            if records is not None:
                mod, found, missing = pipeline.apply_records(mod, tgt, records)
                tuning = {"records": str(records), "kernels_with_record": found,
                          "kernels_without_record": missing}
            mod = pipeline.finish(mod, tgt)
            return tvm.compile(mod, target=tgt, relax_pipeline=None), count_kernels(mod), tuning
    except EdlcError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoweringError(f"TVM build for target '{target.name}' failed: {first[:400]}") from e


def check_records_dir(records: str | os.PathLike) -> None:
    """A tuning-records directory must hold the database `edlc tune` writes."""
    from edlc.errors import InputError

    path = os.fspath(records)
    if not os.path.isdir(path):
        raise InputError(f"tuning records '{path}': no such directory (make one with `edlc tune ... --records {path}`)")
    for name in ("database_workload.json", "database_tuning_record.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise InputError(f"tuning records '{path}': {name} is missing; is this a directory written by `edlc tune`?")


def _spec(name: str, t: TensorType) -> dict[str, Any]:
    return {"name": name, "shape": list(t.shape) if t.shape is not None else None, "dtype": t.dtype}


def compile(
    model: ModelLike,
    target: str | Target = "x86",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    opt_level: int = 2,
    records: str | os.PathLike | None = None,
    quantize: str | None = None,
    calibration: Any = None,
    sparsity: str | None = None,
    *,
    passes: Sequence[str] | None = None,
    disabled_passes: Iterable[str] = (),
    verify_each: bool = False,
    print_after: Iterable[str] = (),
    target_options: Mapping[str, Any] | None = None,
    pass_records: list | None = None,
) -> Module:
    """Compile a model (path, onnx.ModelProto or edlc.Graph) for a target; returns a Module
    whose `run` executes the built code. `pass_records` (a list) collects per-pass timing and
    reports, also when a later stage fails."""
    for option, value in (("quantize", quantize), ("sparsity", sparsity), ("calibration", calibration)):
        if value is not None:
            raise EdlcError(f"option '{option}' is not available in this version of edlc yet")
    tgt = get_target(target, **dict(target_options or {}))
    if records is not None:
        check_records_dir(records)
    name, digest = model_digest(model)
    graph = import_model(model, input_shapes)
    unsupported = unsupported_nodes(graph)
    if unsupported:
        raise UnsupportedOpError(unsupported)
    graph, _ = optimize(graph, opt_level, passes, disabled_passes, verify_each, print_after,
                        pass_records)
    try:
        lowered = lower(graph)
        executable, kernels, tuning = build(lowered, tgt, opt_level, records)
    except LoweringError as e:
        hint = _binding_hint(graph)
        if hint:
            raise LoweringError(f"{e}; {hint}") from e
        raise
    manifest = {
        "format": 1,
        "edlc_version": edlc.__version__,
        "tvm_version": _tvm_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": name, "sha256": digest},
        "target": tgt.to_json(),
        "opt_level": opt_level,
        "kernels": kernels,
        "tuning": tuning,
        "inputs": [_spec(n, t) for n, t in lowered.inputs],
        "outputs": [_spec(n, t) for n, t in lowered.outputs],
        "params": list(lowered.params),
        "files": ["model.so", "params.npz"],
    }
    return Module(executable, manifest, {k: np.asarray(v) for k, v in lowered.params.items()})


def _binding_hint(graph: Graph) -> str:
    """How to bind the symbolic input dims, if any are left (the usual cause of lowering
    failures in exported models)."""
    symbolic = [v for v in graph.inputs if v.type is not None and not v.type.is_static]
    if not symbolic:
        return ""
    example = " ".join(f"--input-shape {v.name}={'x'.join(str(d) if isinstance(d, int) else '1' for d in v.type.shape or ())}"
                       for v in symbolic)
    return f"the model has symbolic input dims: bind them, e.g. {example}"


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)
