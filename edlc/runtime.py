"""Built models: run them, export them, load them back.

A Module wraps what a target built (a TVM executable for the Relax VM) with the manifest that
says what it takes and returns. `Module.run` checks inputs against the manifest so a wrong
name, shape or dtype gets a clear error instead of a crash inside the VM.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edlc import artifact
from edlc.errors import ArtifactError, InputError, TargetError, first_line
from edlc.ir.types import numpy_dtype
from edlc.target import Target, get_runner


def _fmt(spec: Mapping[str, Any]) -> str:
    return f"{spec['name']}: {spec['dtype']}[{', '.join(str(d) for d in spec['shape'])}]"


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Named input arrays from an .npz file (`np.savez(path, x=...)`)."""
    unnamed = (f"{path}: holds one unnamed array; save the inputs by name with "
               "np.savez(path, input_name=array, ...)")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy: one array without a name
            raise InputError(unnamed)
        with z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: cannot read inputs ({first_line(e)})") from e


def check_inputs(inputs: Mapping[str, Any], specs: list[dict[str, Any]]) -> list[np.ndarray]:
    """Arrays in the model's input order, after checking names, dtypes and shapes."""
    expected = "; ".join(_fmt(s) for s in specs)
    if not isinstance(inputs, Mapping):
        raise InputError(f"inputs must be a dict of name -> array; the model expects {expected}")
    names = [s["name"] for s in specs]
    unknown = sorted(set(inputs) - set(names))
    missing = [n for n in names if n not in inputs]
    if unknown or missing:
        parts = ([f"unknown input(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
        raise InputError(f"{', '.join(parts)}; the model expects {expected}")
    arrays = []
    bound: dict[str, int] = {}
    for s in specs:
        try:
            a = np.asarray(inputs[s["name"]])
        except (ValueError, TypeError) as e:  # ragged lists and such
            raise InputError(f"input '{s['name']}': not an array ({first_line(e)}); expected {_fmt(s)}") from e
        want = numpy_dtype(s["dtype"])
        if a.dtype != want:
            raise InputError(f"input '{s['name']}': dtype {a.dtype}, expected {_fmt(s)} "
                             f"(convert with .astype(np.{want.name}))")
        if a.ndim != len(s["shape"]):
            raise InputError(f"input '{s['name']}': shape {list(a.shape)}, expected {_fmt(s)}")
        for got, dim in zip(a.shape, s["shape"]):
            if isinstance(dim, int) and got != dim or isinstance(dim, str) and bound.setdefault(dim, got) != got:
                raise InputError(f"input '{s['name']}': shape {list(a.shape)}, expected {_fmt(s)}")
            if isinstance(dim, str) and got == 0:
                # the kernels were built for any size but do not all handle none (some write
                # their first element regardless); a model compiled for the empty shape does
                raise InputError(
                    f"input '{s['name']}': shape {list(a.shape)} is empty along dim '{dim}', which "
                    f"the model was compiled for any size of; to run on empty tensors, compile "
                    f"with the shape bound (--input-shape {s['name']}="
                    f"{'x'.join(str(d) for d in a.shape)}, or input_shapes=)")
        arrays.append(np.require(a, requirements='C'))  # keeps 0-d arrays 0-d
    return arrays


@dataclass
class ProfileRow:
    """One function the Relax VM called during `Module.profile`: a compiled kernel or a VM
    builtin (allocation, shape checks: names starting with `vm.`)."""

    name: str
    calls: int  # over all profiled runs
    seconds: float  # exclusive wall time over all profiled runs (nested VM calls subtracted)

    @property
    def builtin(self) -> bool:
        return self.name.startswith("vm.")


class Module:
    """A compiled model. `run` takes and returns dicts keyed by the model's tensor names.

    For a target whose runner is not "local" (e.g. `arm`: qemu-aarch64), `run` executes the
    exported bundle through that runner (exporting to a private temporary directory first if
    the module was never exported); `executable` is None for such a module loaded from disk.
    A GPU target's model runs in this process on the GPU (`executable` is None when loaded
    where there is none); `device_files` are its kernel binaries, written into the artifact."""

    def __init__(self, executable, manifest: dict[str, Any], params: dict[str, np.ndarray],
                 directory: Path | None = None, device_files: Mapping[str, bytes] | None = None):
        self.executable = executable
        self.manifest = manifest
        self.params = params
        self.directory = directory
        self.device_files = dict(device_files or {})
        self.target = Target.from_json(manifest["target"])
        self._vm = None
        self._device = None
        self._sync = lambda: None  # waits for the device (a GPU runs kernels asynchronously)
        self._param_tensors: list | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None  # bundle for a runner

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]

    def _machine(self):
        if self._vm is None:
            import tvm
            from tvm import relax

            if self.target.runner != "local":
                raise TargetError(
                    f"target '{self.target.name}' runs under '{self.target.runner}': timing and "
                    "profiling there would measure the emulator, not the board; on the board, "
                    "run `./run-model --repeat N inputs.npz outputs.npz` in the artifact directory")
            self._device = _device(self.target)
            if self.target.device != "cpu":
                self._sync = self._device.sync
            self._vm = relax.VirtualMachine(self.executable, self._device)
            self._param_tensors = [tvm.runtime.tensor(self.params[n], self._device)
                                   for n in self.manifest["params"]]
        return self._vm

    def _args(self, arrays: list[np.ndarray]) -> list:
        """Inputs then weights, as tensors on the device the model runs on."""
        import tvm

        return [tvm.runtime.tensor(a, self._device) for a in arrays] + self._param_tensors

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the built code on `inputs`; returns {output name: array}."""
        arrays = check_inputs(inputs, self.inputs)
        runner = get_runner(self.target.runner)
        if runner is not None:
            named = {s["name"]: a for s, a in zip(self.inputs, arrays)}
            return runner.run(self._bundle_directory(), self.manifest, named)
        vm = self._machine()
        result = vm["main"](*self._args(arrays))
        flat = _flatten(result)
        names = [o["name"] for o in self.outputs]
        if len(flat) != len(names):
            raise RuntimeError(f"the built model returned {len(flat)} outputs, expected {len(names)}")
        return {n: a for n, a in zip(names, flat)}

    def time(self, inputs: Mapping[str, Any], repeat: int = 10, warmup: int = 2) -> list[float]:
        """Wall-clock seconds of `repeat` runs after `warmup` runs (inputs converted once)."""
        arrays = check_inputs(inputs, self.inputs)
        vm = self._machine()
        args = self._args(arrays)
        times = []
        for i in range(warmup + repeat):
            t0 = time.perf_counter()
            vm["main"](*args)
            self._sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return times

    def profile(self, inputs: Mapping[str, Any], repeat: int = 10,
                warmup: int = 1) -> list[ProfileRow]:
        """Time every function the VM calls (kernels and VM builtins) over `repeat` runs after
        `warmup` runs; rows sorted by time, slowest first.

        TVM 0.27's VM has no profiler: this uses `set_instrument`, whose callback runs before and
        after every VM call, on a VM of its own (the one `run` and `time` use stays
        uninstrumented). The callback adds a few microseconds per call."""
        from tvm import relax

        arrays = check_inputs(inputs, self.inputs)
        self._machine()  # checks the runner, converts the params
        vm = relax.VirtualMachine(self.executable, self._device)
        args = self._args(arrays)
        sync = self._sync
        for _ in range(warmup):
            vm["main"](*args)
        calls: dict[str, int] = {}
        seconds: dict[str, float] = {}
        stack: list[list] = []  # [name, start, seconds spent in nested calls]
        clock = time.perf_counter

        def instrument(func, name, before, ret, *call_args):
            sync()  # on a GPU: time the kernel, not its launch
            now = clock()
            if before:
                stack.append([str(name), now, 0.0])
            elif stack:
                sym, start, nested = stack.pop()
                spent = now - start
                calls[sym] = calls.get(sym, 0) + 1
                seconds[sym] = seconds.get(sym, 0.0) + spent - nested
                if stack:
                    stack[-1][2] += spent
            return 0  # VMInstrumentReturnKind.NO_OP

        vm.set_instrument(instrument)
        for _ in range(repeat):
            vm["main"](*args)
        rows = [ProfileRow(n, calls[n], seconds[n]) for n in calls]
        return sorted(rows, key=lambda r: -r.seconds)

    def export(self, out: str | os.PathLike) -> Path:
        """Write the artifact directory atomically; returns its path."""
        if self.executable is None:
            raise TargetError(f"this module was loaded from {self.directory}; copy that directory "
                              "instead of exporting it again")
        runner = get_runner(self.target.runner)
        with artifact.atomic_directory(out) as tmp:
            self.executable.export_library(str(tmp / artifact.LIBRARY), **self._export_options())
            for name, data in self.device_files.items():
                (tmp / name).write_bytes(data)
            artifact.write_params(tmp, {n: self.params[n] for n in self.manifest["params"]})
            if runner is not None:
                extra = runner.bundle(tmp, self.manifest)
                files = list(self.manifest.get("files", []))
                self.manifest = {**self.manifest, "files": files + [f for f in extra if f not in files]}
            artifact.write_manifest(tmp, self.manifest)
        self.directory = Path(out)
        return self.directory

    def _bundle_directory(self) -> Path:
        """An exported artifact directory a runner can execute: the one this module was
        exported to or loaded from, else a private temporary one."""
        if self.directory is not None and (self.directory / artifact.MANIFEST).is_file():
            return self.directory
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="edlc-bundle-")
            self.export(Path(self._scratch.name) / "artifact")
        return Path(self._scratch.name) / "artifact"

    def _export_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"cc": self.target.cc} if self.target.cc else {}
        if self.target.device == "cuda":  # model.so carries the cubin, not the CUDA source
            from edlc.targets import cuda

            cubin = self.device_files.get(cuda.cubin_name(self.target.tvm["arch"]))
            if cubin is None:
                raise TargetError(f"this module was loaded from {self.directory}; copy that "
                                  "directory instead of exporting it again")
            options["fpack_imports"] = cuda.embed_cubin(cubin)
        return options

    def __repr__(self) -> str:
        ins = ", ".join(_fmt(s) for s in self.inputs)
        return f"<edlc.Module {self.manifest['model']['name']} target={self.target.name} ({ins})>"


def _flatten(result) -> list[np.ndarray]:
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    out: list[np.ndarray] = []
    for r in result:
        out.extend(_flatten(r))
    return out


def load(directory: str | os.PathLike) -> Module:
    """Load an artifact directory written by `Module.export` or `edlc compile -o`."""
    import tvm

    d = Path(directory)
    manifest, params = artifact.read_artifact(d)
    target = Target.from_json(manifest["target"])
    if target.runner != "local":
        return Module(None, manifest, params, directory=d)  # built for another machine
    if target.device == "cuda":
        from edlc.targets.cuda import gpu_present

        if not gpu_present():  # TVM cannot load GPU code here; `run` says why
            return Module(None, manifest, params, directory=d)
    try:
        lib = tvm.runtime.load_module(str(d / artifact.LIBRARY))
    except Exception as e:  # a truncated or foreign library
        raise ArtifactError(f"{d / artifact.LIBRARY}: cannot load the built model ({first_line(e)}); "
                            "compile it again") from e
    return Module(lib, manifest, params, directory=d)


def _device(target: Target):
    """The TVM device the target's kernels run on; a TargetError when it is absent."""
    import tvm

    if target.device == "cuda":
        from edlc.targets.cuda import device

        return device(target.tvm["arch"])
    return tvm.cpu()
