"""Standalone programs for Linux boards: no TVM runtime at all.

`edlc compile m.onnx --target arm --aot -o out` (`edlc.compile(m, target="arm", aot=True)`)
takes the microcontrollers' ahead-of-time path (edlc/lower/aot.py: kernels built standalone,
an entry calling them in order over one static arena, weights in the binary) and links it into
one static aarch64 Linux program, `out/run-model`. The kernels get edlc's default CPU
schedules, single-threaded (there is no thread pool without the TVM runtime).

On a board: `cd dir-with-inputs && /path/to/run-model` reads input<i>.bin (each input's raw
little-endian bytes, in the model's input order), runs one inference, writes output<i>.bin and
prints `edlc: rc=0 stack=<bytes>`. Here, `Module.run` runs it under qemu-aarch64 (static: no
sysroot needed; QEMU's model of the --mcpu, as for the bundle: edlc.targets.arm.qemu_cpu), and
`run_firmware(inputs, count=True)` also counts its instructions (instructions, not time).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edlc.errors import TargetError
from edlc.target import Target, register_runner

RUNNER = "qemu-aarch64-static"
QEMU = "qemu-aarch64"
# the targets with a standalone form, by LLVM triple: the runner that runs their program here
RUNNERS = {"aarch64-linux-gnu": RUNNER}


def standalone_target(target: Target) -> Target:
    """The standalone (AOT) form of a CPU target: single-threaded, run by the static runner.
    A TargetError for targets without one."""
    if target.tvm.get("mtriple") not in RUNNERS or target.cc is None:
        raise TargetError(f"target '{target.name}' has no ahead-of-time (--aot) form; it exists "
                          "for microcontrollers (a firmware project) and for arm (a static "
                          "program)")
    return dataclasses.replace(
        target, tvm={**target.tvm, "num-cores": 1}, runner=RUNNERS[target.tvm["mtriple"]],
        description=f"{target.description.split(',')[0]}, standalone static program (no TVM "
                    f"runtime), run here under {QEMU}")


def compile_standalone(lowered, target: Target, name: str, manifest: dict[str, Any]):
    """Lower ahead of time and wrap the program's project as a module (FirmwareModule: `run`,
    `run_firmware`, `memory`, `export` as for a microcontroller)."""
    from edlc.targets.mcu.build import compile_firmware
    from edlc.targets.standalone.project import StandaloneWriter

    return compile_firmware(lowered, target, name, manifest, writer_class=StandaloneWriter)


class QemuAarch64StaticRunner:
    """Runs the exported program under user-mode QEMU in a private working directory."""

    def bundle(self, directory: Path, manifest: Mapping[str, Any]) -> list[str]:
        return []  # the project links its program when written

    def run(self, directory: Path, manifest: Mapping[str, Any],
            inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_program(directory, manifest, inputs).outputs

    def run_program(self, directory: Path, manifest: Mapping[str, Any],
                    inputs: Mapping[str, np.ndarray], count: bool = False):
        from edlc.targets.mcu.runner import run_program
        from edlc.targets.standalone.project import PROGRAM

        qemu = shutil.which(QEMU)
        if qemu is None:
            raise TargetError(f"{QEMU} is not installed; it runs arm programs on this host "
                              "(apt-get install qemu-user, or run scripts/setup.sh)")
        program = Path(directory) / PROGRAM
        if not program.is_file():
            raise TargetError(f"{directory}: no {PROGRAM}; compile the model again")
        from edlc.targets.arm import qemu_cpu

        cpu = qemu_cpu(manifest["target"]["tvm"])
        cmd = [qemu, "-cpu", cpu, str(program.resolve())]
        return run_program(cmd, program, manifest, inputs, count, f"{QEMU} -cpu {cpu}")


register_runner(RUNNER, QemuAarch64StaticRunner)
