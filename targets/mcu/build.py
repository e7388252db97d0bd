"""`edlc.compile` for microcontroller targets: lower ahead of time, plan the arena, and return a
Module whose `export` writes the firmware project and whose `run` runs it on QEMU."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edlc import artifact
from edlc.lower import LoweredModel
from edlc.lower.aot import AotProgram, lower_aot
from edlc.runtime import Module
from edlc.target import Target
from edlc.targets.mcu.project import ProjectWriter


class FirmwareModule(Module):
    """A model compiled ahead of time: a microcontroller's firmware project, or a standalone
    Linux program (targets/standalone). `memory` is the report memory.json holds; `run` builds
    the test firmware (or program) and runs it on QEMU (exported to a private directory first
    when never exported); `run_firmware(..., count=True)` also counts instructions."""

    def __init__(self, program: AotProgram, writer: ProjectWriter, manifest: dict[str, Any]):
        super().__init__(None, manifest, {})
        self.program = program
        self.writer = writer
        self.memory = writer.memory_report()

    def export(self, out: str | os.PathLike) -> Path:
        """Write the firmware project atomically; returns its path."""
        with artifact.atomic_directory(out) as tmp:
            files = self.writer.write(tmp, self.memory)
            self.manifest = {**self.manifest, "files": files}
            artifact.write_manifest(tmp, self.manifest)
        self.directory = Path(out)
        return self.directory

    def run_firmware(self, inputs: Mapping[str, Any], count: bool = False):
        """One inference on the emulated board: outputs, stack high-water mark, instructions."""
        from edlc.runtime import check_inputs
        from edlc.target import get_runner

        arrays = check_inputs(inputs, self.inputs)
        named = {s["name"]: a for s, a in zip(self.inputs, arrays)}
        return get_runner(self.target.runner).run_program(self._bundle_directory(), self.manifest,
                                                          named, count=count)


def compile_firmware(lowered: LoweredModel, target: Target, name: str,
                     manifest: dict[str, Any],
                     writer_class: type[ProjectWriter] = ProjectWriter) -> FirmwareModule:
    """Lower `lowered` ahead of time for `target` and wrap it as a FirmwareModule; `manifest`
    is the driver's (inputs, outputs, versions), completed here. `writer_class` writes the
    project (the standalone Linux program subclasses the firmware project's writer)."""
    program = lower_aot(lowered, target, name)
    writer = writer_class(program, target, name, [n for n, _ in lowered.inputs],
                          [n for n, _ in lowered.outputs])
    manifest = {**manifest, "kernels": len({c.kernel for c in program.calls}),
                "params": [],  # the weights are C arrays in the library, not a params file
                "weight_tensors": len(writer.constants()), "files": [],
                "arena_bytes": writer.layout.plan.size}
    return FirmwareModule(program, writer, manifest)

