"""ARM: aarch64 Linux boards (Raspberry Pi 4/5, Jetson CPUs, Graviton), cross-built on this host.

The artifact is a bundle that runs on the board without Python:

    OUT/
      manifest.json  model.so  params.npz   as for every target (model.so is an aarch64 ELF)
      run-model                             aarch64 program: ./run-model inputs.npz outputs.npz
      lib/libtvm_runtime.so lib/libtvm_ffi.so   the TVM runtime (run-model's rpath: $ORIGIN/lib)

On this host, `Module.run` runs the same bundle under `qemu-aarch64 -L /usr/aarch64-linux-gnu`,
emulating the board's CPU (`-cpu cortex-a72` for the default): code the board could not run
(an `sdot` on a cortex-a72) stops with an illegal instruction here as it would there. Where
--mattr asks for more than the CPU has, QEMU's `max` CPU runs it. QEMU counts instructions;
it says nothing of the board's timings. The runtime libraries come from PyPI's aarch64 wheels
(see arm_runtime.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edlc.errors import TargetError
from edlc.target import Target, register_runner, register_target

CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's cross libc; QEMU_LD_PREFIX overrides it
MCPUS = ("cortex-a72", "cortex-a53", "cortex-a76", "neoverse-n1")  # the first is the default
MATTRS = ("+neon", "+dotprod", "+i8mm", "+fp16")
CORES = {"cortex-a53": 4, "cortex-a72": 4, "cortex-a76": 4, "neoverse-n1": 4}
# what each CPU has beyond armv8-a NEON (LLVM agrees); the rest comes with --mattr
IMPLIED = {"cortex-a53": (), "cortex-a72": (), "cortex-a76": ("dotprod", "fp16"),
           "neoverse-n1": ("dotprod", "fp16")}


# LLVM's names where they differ (+fp16, armv8.2-a's half-precision arithmetic, is +fullfp16:
# LLVM ignores "+fp16" with a warning)
LLVM_MATTR = {"+fp16": "+fullfp16"}


def _mattr(mattr: list[str] | str | None) -> list[str]:
    given = mattr.split(",") if isinstance(mattr, str) else list(mattr or [])
    out = ["+neon"]
    for a in (s.strip() for s in given):
        if not a:
            continue
        a = a if a[0] in "+-" else "+" + a
        if a not in MATTRS:
            raise TargetError(f"target 'arm' does not take --mattr {a}; it takes {', '.join(MATTRS)}")
        if a not in out:
            out.append(a)
    return out


@register_target("arm", "aarch64 Linux board (default cortex-a72), run here under qemu-aarch64")
def arm(mcpu: str | None = None, mattr: list[str] | str | None = None,
        num_cores: int | None = None) -> Target:
    mcpu = mcpu or MCPUS[0]
    if mcpu not in MCPUS:
        raise TargetError(f"target 'arm' does not know --mcpu {mcpu}; it takes {', '.join(MCPUS)}")
    attrs = _mattr(mattr)
    tvm_target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu,
                  "mattr": [LLVM_MATTR.get(a, a) for a in attrs],
                  "num-cores": int(num_cores or CORES[mcpu])}
    return Target("arm", tvm_target, cc=CC, runner=QEMU,
                  features={a[1:]: a in attrs or a[1:] in IMPLIED[mcpu] for a in MATTRS},
                  description=f"aarch64 Linux ({mcpu}), run here under {QEMU}")


def qemu_cpu(tvm_target: Mapping[str, Any]) -> str:
    """QEMU's model of the board's CPU (`-cpu`), or "max" where --mattr asks for features that
    CPU lacks (or the CPU is not one QEMU knows)."""
    mcpu = tvm_target.get("mcpu")
    edlc_name = {v: k for k, v in LLVM_MATTR.items()}
    extra = {edlc_name.get(a, a)[1:] for a in tvm_target.get("mattr", ()) if a.startswith("+")} - {"neon"}
    if mcpu in IMPLIED and extra <= set(IMPLIED[mcpu]):
        return mcpu
    return "max"


class QemuAarch64Runner:
    """Writes the board bundle and runs it under user-mode QEMU."""

    files = ("run-model", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so")

    def bundle(self, directory: Path, manifest: Mapping[str, Any]) -> list[str]:
        """Add run-model and the runtime libraries to an artifact directory being written."""
        from edlc.targets.arm_runtime import RUNTIME_LIBS, runner_program, runtime_dir

        exe = runner_program()
        shutil.copyfile(exe, directory / "run-model")
        os.chmod(directory / "run-model", 0o755)
        (directory / "lib").mkdir(exist_ok=True)
        for lib in RUNTIME_LIBS:
            shutil.copyfile(runtime_dir() / "lib" / lib, directory / "lib" / lib)
        return list(self.files)

    def run(self, directory: Path, manifest: Mapping[str, Any],
            inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise TargetError(f"{QEMU} is not installed; it runs arm builds on this host "
                              "(apt-get install qemu-user, or run scripts/setup.sh)")
        sysroot = os.environ.get("QEMU_LD_PREFIX") or SYSROOT
        if not os.path.isfile(os.path.join(sysroot, "lib", "ld-linux-aarch64.so.1")):
            raise TargetError(f"no aarch64 C library under {sysroot} for {QEMU} "
                              "(apt-get install libc6-arm64-cross, or set QEMU_LD_PREFIX)")
        missing = [f for f in self.files if not (directory / f).is_file()]
        if missing:
            raise TargetError(f"{directory}: the arm bundle lacks {', '.join(missing)}; "
                              "compile it again with this edlc")
        with tempfile.TemporaryDirectory(prefix="edlc-arm-") as tmp:
            ins, outs = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz")
            np.savez(ins, **inputs)
            cmd = [qemu, "-cpu", qemu_cpu(manifest["target"]["tvm"]), "-L", sysroot,
                   str(directory / "run-model"), "--dir", str(directory), ins, outs]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:
                raise TargetError(f"cannot start {QEMU}: {e}") from e
            if proc.returncode != 0:
                raise TargetError(f"run-model failed under {QEMU} ({_status(proc.returncode)})"
                                  f"{_last_line(proc.stderr)}")
            with np.load(outs, allow_pickle=False) as z:
                got = {k: z[k] for k in z.files}
        return {o["name"]: got[o["name"]] for o in manifest["outputs"]}


def _status(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f": {lines[-1][:400]}" if lines else ""


register_runner(QEMU, QemuAarch64Runner)
