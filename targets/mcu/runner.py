"""Run a firmware project's test firmware on QEMU (`qemu-system-arm`, semihosting).

`make` builds `build/fw.elf` in the project directory (incrementally: the weights compile once);
each run writes the inputs as raw `input<i>.bin` files into a private directory QEMU runs in,
and reads back `output<i>.bin`. With `count=True` a TCG plugin built here (insn_count.c)
counts the instructions between the firmware's markers around the inference: deterministic,
unlike time under an emulator.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edlc.errors import TargetError
from edlc.ir.types import numpy_dtype

QEMU = "qemu-system-arm"
CC = "arm-none-eabi-gcc"
PLUGIN_SOURCE = Path(__file__).with_name("insn_count.c")
TIMEOUT_S = 300


@dataclass
class FirmwareRun:
    """Outputs of one inference on the emulated board, and what it cost there."""

    outputs: dict[str, np.ndarray]
    stack_bytes: int  # the stack's high-water mark (painted stack, measured after the run)
    instructions: int | None = None  # between the markers; None unless counted


def _check_tools() -> None:
    for tool, pkg in ((CC, "gcc-arm-none-eabi libnewlib-arm-none-eabi"), (QEMU, "qemu-system-arm")):
        if shutil.which(tool) is None:
            raise TargetError(f"{tool} is not installed; it builds and runs microcontroller "
                              f"firmware here (apt-get install {pkg}, or run scripts/setup.sh)")


def build_firmware(directory: Path) -> Path:
    """`make` the test firmware of a project directory; returns build/fw.elf."""
    _check_tools()
    proc = subprocess.run(["make", "-s", "-C", str(directory), "build/fw.elf"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise TargetError(f"building the test firmware in {directory} failed: {' | '.join(tail)[:600]}")
    return directory / "build" / "fw.elf"


def run_firmware(directory: str | os.PathLike, manifest: Mapping[str, Any],
                 inputs: Mapping[str, np.ndarray], count: bool = False) -> FirmwareRun:
    """Build (if needed) and run the test firmware of a project on the target's QEMU board."""
    directory = Path(directory)
    elf = build_firmware(directory)
    machine = manifest["target"]["mcu"]["machine"]
    cmd = [shutil.which(QEMU) or QEMU, "-M", machine, "-nographic", "-monitor", "none",
           "-semihosting-config", "enable=on,target=native", "-kernel", str(elf.resolve())]
    return run_program(cmd, elf, manifest, inputs, count, f"{QEMU} -M {machine}")


def run_program(cmd: list[str], program: Path, manifest: Mapping[str, Any],
                inputs: Mapping[str, np.ndarray], count: bool, where: str) -> FirmwareRun:
    """Run `cmd` (QEMU running `program`, a test main of the project writer) in a private
    directory holding input<i>.bin; read back output<i>.bin, the return code and the stack
    line it prints; with `count`, the instructions between its markers (TCG plugin)."""
    from edlc.targets.mcu.elf import symbols

    with tempfile.TemporaryDirectory(prefix="edlc-qemu-") as tmp:
        for i, spec in enumerate(manifest["inputs"]):
            a = np.ascontiguousarray(inputs[spec["name"]], dtype=numpy_dtype(spec["dtype"]))
            Path(tmp, f"input{i}.bin").write_bytes(a.tobytes())
        counts = Path(tmp, "counts.txt")
        if count:
            syms = symbols(program.read_bytes())
            begin, end = syms["edlc_mark_begin"][0], syms["edlc_mark_end"][0]
            cmd = [cmd[0], "-plugin", f"{plugin()},begin={begin:#x},end={end:#x},out={counts}",
                   *cmd[1:]]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise TargetError(f"the program did not finish within {TIMEOUT_S} s on {where}") from e
        except OSError as e:
            raise TargetError(f"cannot start {cmd[0]}: {e}") from e
        m = re.search(r"edlc: rc=(\d+) stack=(\d+)", proc.stdout + proc.stderr)
        if proc.returncode != 0 or m is None or m.group(1) != "0":
            said = " ".join((proc.stdout + proc.stderr).split())[-400:]
            raise TargetError(f"the {'firmware' if '-kernel' in cmd else 'program'} failed on "
                              f"{where} (exit status {proc.returncode}): {said or 'no output'}")
        outputs = {}
        for i, spec in enumerate(manifest["outputs"]):
            raw = Path(tmp, f"output{i}.bin").read_bytes()
            outputs[spec["name"]] = np.frombuffer(raw, dtype=numpy_dtype(spec["dtype"])) \
                .reshape(spec["shape"]).copy()
        instructions = None
        if count:
            between = int(counts.read_text().split()[0])
            instructions = between if between >= 0 else None
        return FirmwareRun(outputs, int(m.group(2)), instructions)


@cache
def plugin() -> Path:
    """The instruction-count plugin, built once per source with the host's gcc."""
    from edlc.targets.arm_runtime import cache_root

    source = PLUGIN_SOURCE.read_bytes()
    key = hashlib.sha256(source).hexdigest()[:12]
    out = cache_root() / "qemu-plugins" / f"insn_count-{key}.so"
    if out.is_file():
        return out
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise TargetError("no host C compiler (gcc) to build the QEMU instruction-count plugin")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".insn_count-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, str(PLUGIN_SOURCE)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise TargetError(f"building the QEMU plugin failed: {proc.stderr.strip()[-300:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class QemuSystemArmRunner:
    """The runner of microcontroller targets: the project is complete as written, so bundling
    adds nothing; running builds the test firmware and runs it under QEMU."""

    def bundle(self, directory: Path, manifest: Mapping[str, Any]) -> list[str]:
        return []

    def run(self, directory: Path, manifest: Mapping[str, Any],
            inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_firmware(directory, manifest, inputs).outputs

    def run_program(self, directory: Path, manifest: Mapping[str, Any],
                    inputs: Mapping[str, np.ndarray], count: bool = False) -> FirmwareRun:
        return run_firmware(directory, manifest, inputs, count)
