"""The standalone program's project: the firmware project's model library (same header, entry
and kernels), weights as a binary blob, the firmware's test main over a POSIX harness, and a
Makefile that links everything into one static binary.

    OUT/
      manifest.json  memory.json  Makefile
      run-model                    the static program, linked at export
      lib/edlc_<name>.h .c         the API and the entry (as for a microcontroller)
      lib/edlc_<name>_weights.S    the weights: `.incbin` of _weights.bin, one symbol per tensor
      lib/edlc_<name>_kernels.o    the kernels (LLVM object for the board's CPU)
      src/main.c harness.c harness.h   the program around the library

The weights are a blob and not C arrays as on a microcontroller: a ResNet-18 has 45 MB of them,
which as a C initializer is hundreds of MB of source that gcc compiles for minutes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

import edlc
from edlc.errors import TargetError
from edlc.memory_plan import ALIGN, align_up
from edlc.targets.mcu.elf import section_sizes
from edlc.targets.mcu.project import TEMPLATES as FIRMWARE_TEMPLATES
from edlc.targets.mcu.project import ProjectWriter, fill_template

TEMPLATES = Path(__file__).with_name("templates")
PROGRAM = "run-model"


class StandaloneWriter(ProjectWriter):
    """Writes the standalone program's project and links the program (target.cc, -static)."""

    @property
    def cc(self) -> str:
        return self.target.cc

    @property
    def cflags(self) -> list[str]:
        return []  # the entry and main are plain C: the kernels carry the CPU's features

    def weights_blob(self) -> bytes:
        """Every constant's bytes, each at a 16-byte aligned offset, in constants() order."""
        parts = []
        for t in self.constants():
            raw = np.ascontiguousarray(t.data).tobytes()
            parts.append(raw + bytes(align_up(len(raw)) - len(raw)))
        return b"".join(parts)

    def weights_asm(self) -> str:
        lines = [f"/* Weights of model '{self.model}' (edlc {edlc.__version__}): const, one symbol "
                 f"per tensor into edlc_{self.name}_weights.bin. */",
                 f'.section .rodata.edlc.{self.name},"a"']
        offset = 0
        for t in self.constants():
            sym = self.weight_symbol(t)
            lines += [f".balign {ALIGN}", f".global {sym}", f".type {sym}, %object",
                      f".size {sym}, {t.nbytes}", f"{sym}:",
                      f'.incbin "edlc_{self.name}_weights.bin", {offset}, {t.nbytes}']
            offset += align_up(t.nbytes)
        return "\n".join(lines) + "\n"

    def weights_files(self) -> dict[str, str | bytes]:
        return {f"lib/edlc_{self.name}_weights.S": self.weights_asm(),
                f"lib/edlc_{self.name}_weights.bin": self.weights_blob()}

    def makefile(self) -> str:
        cc = self.cc
        ar = cc[:-len("gcc")] + "ar" if cc.endswith("gcc") else "ar"
        return fill_template((TEMPLATES / "Makefile.in").read_text(), {
            "MODEL": self.model, "VERSION": edlc.__version__, "TARGET": self.target.name,
            "NAME": self.name, "CC": cc, "AR": ar})

    def write(self, out: Path, report: dict[str, Any] | None = None) -> list[str]:
        """Write the project into `out` and link the program; returns the files written.
        `report` gains "program": the program's bytes, loaded (code + data) and on disk."""
        written = self._write_lib(out)
        src = out / "src"
        src.mkdir()
        (src / "main.c").write_text(self.test_main())
        shutil.copyfile(TEMPLATES / "harness.c", src / "harness.c")
        shutil.copyfile(FIRMWARE_TEMPLATES / "harness.h", src / "harness.h")
        (out / "Makefile").write_text(self.makefile())
        written += ["src/main.c", "src/harness.c", "src/harness.h", "Makefile"]
        program = link_program(out, self.cc)
        report = report if report is not None else self.memory_report()
        report["program"] = program_sizes(program)
        (out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
        return written + [PROGRAM, "memory.json"]


def link_program(out: Path, cc: str) -> Path:
    """`make` the program in a project directory, then drop the objects (the weights' object
    is as large as the weights); returns the program's path."""
    if shutil.which(cc) is None:
        raise TargetError(f"{cc} is not installed; it links the standalone program "
                          "(apt-get install gcc-aarch64-linux-gnu, or run scripts/setup.sh)")
    proc = subprocess.run(["make", "-s", "-C", str(out), PROGRAM], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise TargetError(f"linking the standalone program in {out} failed: "
                          f"{' | '.join(tail)[:600]}")
    shutil.rmtree(out / "build", ignore_errors=True)
    return out / PROGRAM


def program_sizes(program: Path) -> dict[str, int]:
    """Bytes of the program: on disk, and loaded (code and read-only data, data, bss)."""
    sections = section_sizes(program.read_bytes())
    group = {"code": (".text", ".rodata", ".init", ".fini", ".eh_frame", ".gcc_except_table"),
             "data": (".data", ".tdata", ".init_array", ".fini_array", ".got"),
             "bss": (".bss", ".tbss")}
    sizes = {k: sum(s for n, s in sections.items() if n.startswith(v)) for k, v in group.items()}
    return {"file": program.stat().st_size, **sizes}
