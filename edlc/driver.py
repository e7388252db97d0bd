"""`edlc.compile`: import -> passes -> lower -> build, each step a plain function call.

Every user-caused failure surfaces as an EdlcError before any artifact is written; TVM's own
exceptions are caught at the lowering/build boundary and re-raised naming the node or step.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

import edlc
from edlc.errors import (
    EdlcError,
    LoweringError,
    ModelError,
    ShapeError,
    UnsupportedOpError,
    first_line,
)
from edlc.frontend.onnx import load_onnx, onnx_elem_type
from edlc.frontend.onnx_checks import checked_binding
from edlc.ir.graph import Graph
from edlc.ir.types import TensorType
from edlc.lower import LoweredModel, count_kernels, lower, pipeline, unsupported_nodes
from edlc.pass_manager import PassManager
from edlc.records import check_dir
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
        shape = checked_binding(shape, onnx_elem_type(old.dtype), f"input '{name}'")
        if old.shape is not None and len(old.shape) != len(shape):
            raise ShapeError(f"input '{name}' has rank {len(old.shape)} {list(old.shape)}, got shape {list(shape)}")
        if old.shape is not None:
            for d, s in zip(old.shape, shape):
                if isinstance(d, int) and d != s:
                    raise ShapeError(f"input '{name}' has fixed dim {d}, cannot bind it to {s}")
        v.type = TensorType(shape, old.dtype)
    for node in graph.nodes:  # symbolic types downstream are stale: let inference redo them
        for out in node.outputs:
            if out.type is not None and not out.type.is_static:
                out.type = TensorType(None, out.type.dtype)


def import_model(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    if isinstance(model, Graph):
        model.verify()  # a graph built by hand: broken links fail here, by name, not in TVM
        graph = model.copy()
        if input_shapes:
            bind_graph_shapes(graph, input_shapes)
        return graph
    if isinstance(model, (str, os.PathLike)):
        return load_onnx(model, input_shapes)  # errors name the file
    if not isinstance(model, onnx.ModelProto):
        raise EdlcError(f"model must be a path, an onnx.ModelProto or an edlc.Graph, not {type(model).__name__}")
    return load_onnx(model, input_shapes)


def optimize(graph: Graph, opt_level: int = 2, passes: Sequence[str] | None = None,
             disabled: Iterable[str] = (), verify_each: bool = False,
             print_after: Iterable[str] = (),
             records: list | None = None, target: Target | None = None) -> tuple[Graph, PassManager]:
    """Run the pass pipeline for `opt_level` (or an explicit list) on the graph; with a
    `target`, the pipeline leaves out passes made for other kinds of target. `records`, if
    given, receives a PassRecord per pass run as it finishes (kept even if a later pass fails)."""
    options: dict[str, Any] = {"print_after": print_after, "disabled": disabled}
    if verify_each:
        options["verify_each"] = True
    if records is not None:
        options["records"] = records
    pm = PassManager(passes, **options) if passes is not None else \
        PassManager.for_opt_level(opt_level, target, **options)
    return pm.run(graph), pm


@dataclass
class Build:
    """What `build` made: the TVM executable, its kernel count, which kernels had a tuning
    record (with `records`), and files the artifact keeps beside the library (a GPU target's
    kernel binary, by file name)."""

    executable: Any
    kernels: int
    params: dict[str, Any]  # what `main` takes after its inputs (weights, some re-laid)
    tuning: dict[str, Any] | None = None
    device_files: dict[str, bytes] = field(default_factory=dict)


def build(lowered: LoweredModel, target: Target, opt_level: int = 2,
          records: str | os.PathLike | None = None) -> Build:
    """Compile a lowered model with TVM (and, for a GPU, its kernels with the GPU's compiler)
    for the target."""
    import tvm

    try:
        tgt = target.tvm_target()
        with tvm.transform.PassContext(opt_level=3 if opt_level > 0 else 0):
            mod = pipeline.fuse(lowered.mod, tgt)
            tuning = None
            if records is not None:
                mod, applied = pipeline.apply_records(mod, tgt, records)
                tuning = {"records": str(records), "kernels_with_record": applied.found,
                          "kernels_without_record": applied.missing,
                          "records_left_out": applied.check.dropped,
                          "kept_default_schedule": len(applied.kept_default),
                          "kernels_kept_default": applied.kept_default}
            mod, params = pipeline.finish(mod, tgt, dict(lowered.params))
            if target.device == "cuda":
                from edlc.targets import cuda

                executable, files = cuda.build(mod, tgt)
                return Build(executable, count_kernels(mod), params, tuning, files)
            return Build(tvm.compile(mod, target=tgt, relax_pipeline=None), count_kernels(mod),
                         params, tuning)
    except EdlcError:
        raise
    except Exception as e:
        raise LoweringError(f"TVM build for target '{target.name}' failed: {first_line(e)}") from e


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
    arch: str | None = None,
    pass_records: list | None = None,
    quantize_options: Mapping[str, Any] | None = None,
    sparsity_options: Mapping[str, Any] | None = None,
    aot: bool = False,
) -> Module:
    """Compile a model (path, onnx.ModelProto or edlc.Graph) for a target; returns a Module
    whose `run` executes the built code. `pass_records` (a list) collects per-pass timing and
    reports, also when a later stage fails. `quantize="int8"` quantizes with `calibration`
    (an .npz path or an iterable of input dicts); `quantize_options` go to
    `edlc.passes.quantize.quantize` (method, activations, max_drop, ...); `quantize="fp16"` or
    `"bf16"` runs weights and activations in half precision with no calibration
    (`edlc.passes.precision`; options op_block_list, node_block_list, and accumulate="float16"
    where the target computes in float16). `target_options` go
    to the target (mcpu, mattr, arch); `arch="sm_90"` is short for `target_options={"arch": ...}`
    (a GPU target's architecture). `sparsity="channel:0.5"` prunes with
    `edlc.passes.sparsity.sparsify`, given `sparsity_options` (per-layer `layers=`, `criterion=`,
    ...); the manifest keeps its report's summary. `aot=True` builds ahead of time, without the
    TVM runtime: microcontrollers always do (a firmware project); arm gives a static program."""
    spec = None
    if sparsity is not None:
        from edlc.passes.sparsity import parse_spec

        spec = parse_spec(sparsity)  # a malformed spec fails before any work
    _check_calibration(quantize, calibration, spec.kind if spec is not None else None)
    options = dict(target_options or {})
    if arch is not None:
        options["arch"] = arch
    tgt = get_target(target, **options)
    half_options = dict(quantize_options or {}) if quantize in ("fp16", "bf16") else {}
    accumulate = half_options.pop("accumulate", "float32")  # a lowering option, not the pass's
    if quantize in ("fp16", "bf16"):
        from edlc.lower.precision import check_target

        check_target(tgt, quantize, accumulate)  # before any work: a target without such kernels says so
    if aot and tgt.mcu is None:
        from edlc.targets.standalone import standalone_target

        tgt = standalone_target(tgt)  # a TargetError where there is no such form
    if records is not None:
        check_dir(records)
    name, digest = model_digest(model)
    graph = import_model(model, input_shapes)
    unsupported = unsupported_nodes(graph)
    if unsupported:
        raise UnsupportedOpError(unsupported)
    sparsity_report = None
    if sparsity is not None:
        from edlc.passes.sparsity import sparsify

        options = dict(sparsity_options or {})
        if calibration is not None:  # refit the kept weights of the layers pruning cut into
            options.setdefault("calibration", calibration)
        graph, sparsity_report = sparsify(graph, spec, **options)
    quant_report = None
    if quantize == "int8":
        from edlc.passes.quantize import quantize as quantize_int8

        graph, quant_report = quantize_int8(graph, calibration, **dict(quantize_options or {}))
    precision: list = []
    if quantize in ("fp16", "bf16"):  # a pass of the pipeline, placed before fusion
        from edlc.pass_manager import default_pipeline
        from edlc.passes.precision import pipeline_with

        passes, precision = pipeline_with(
            list(passes) if passes is not None else default_pipeline(opt_level, tgt), quantize,
            half_options, disabled_passes)
    graph, _ = optimize(graph, opt_level, passes, disabled_passes, verify_each, print_after,
                        pass_records, tgt)
    if precision:
        precision[-1].accumulate = accumulate
    reports = {"quantization": quant_report, "sparsity": sparsity_report,
               "precision": precision[-1] if precision else None}
    try:
        lowered = lower(graph, tgt, accumulate=accumulate)
        head = _manifest_head(lowered, tgt, name, digest, opt_level, reports)
        if tgt.mcu is not None or aot:  # a firmware project or a standalone program
            return _compile_firmware(lowered, tgt, name, head, records)
        built = build(lowered, tgt, opt_level, records)
    except LoweringError as e:
        hint = _binding_hint(graph)
        if hint:
            raise LoweringError(f"{e}; {hint}") from e
        raise
    manifest = {**head, "kernels": built.kernels, "tuning": built.tuning,
                "params": list(built.params),
                "files": ["model.so", "params.npz", *built.device_files]}
    return Module(built.executable, manifest, {k: np.asarray(v) for k, v in built.params.items()},
                  device_files=built.device_files)


def _manifest_head(lowered: LoweredModel, tgt: Target, name: str, digest: str, opt_level: int,
                   reports: Mapping[str, Any]) -> dict[str, Any]:
    """What every artifact's manifest says of its making: versions, model, target, inputs and
    outputs, and the summaries of the quantization and sparsity reports (when those ran)."""
    head = {
        "format": 1,
        "edlc_version": edlc.__version__,
        "tvm_version": _tvm_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": name, "sha256": digest},
        "target": tgt.to_json(),
        "opt_level": opt_level,
        "inputs": [_spec(n, t) for n, t in lowered.inputs],
        "outputs": [_spec(n, t) for n, t in lowered.outputs],
    }
    head.update({key: report.summary() for key, report in reports.items() if report is not None})
    return head


def _compile_firmware(lowered: LoweredModel, tgt: Target, name: str, manifest: dict[str, Any],
                      records: str | os.PathLike | None) -> Module:
    """Ahead of time (targets/mcu, targets/standalone): kernels, a static arena, a firmware
    project or a standalone program."""
    from edlc.targets.mcu.build import compile_firmware
    from edlc.targets.standalone import compile_standalone

    if records is not None:
        raise EdlcError(f"target '{tgt.name}' does not apply tuning records yet")
    return (compile_firmware if tgt.mcu is not None else compile_standalone)(
        lowered, tgt, name, manifest)


def _check_calibration(quantize: str | None, calibration: Any, sparsity_kind: str | None) -> None:
    from edlc.errors import InputError

    if quantize not in (None, "int8", "fp16", "bf16"):
        raise EdlcError(f"quantize='{quantize}' is not one of int8, fp16, bf16")
    if quantize in ("fp16", "bf16") and calibration is not None and sparsity_kind is None:
        raise InputError(f"quantize='{quantize}' takes no calibration data (half precision "
                         "needs no activation ranges); drop --calib / calibration=")
    if quantize == "int8" and calibration is None:
        raise InputError("quantize='int8' needs calibration data: an .npz file (--calib) or an "
                         "iterable of input dicts (calibration=...)")
    if quantize is None and calibration is not None and sparsity_kind is None:
        raise InputError("calibration data is only used with quantize='int8' or sparsity=... "
                         "(it refits the weights pruning keeps)")


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
