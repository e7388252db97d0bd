"""Microcontrollers (Cortex-M): firmware projects built ahead of time, no TVM runtime.

`--target cortex-m4 | cortex-m7 | cortex-m55 | cortex-m0plus` builds the kernels with LLVM
for thumb (the CPU's FPU, DSP and MVE features on); `--target c` emits portable C99 kernels
instead (built by the project's Makefile; `--mcpu` picks the CPU of the test firmware, default
cortex-m4). `edlc compile` writes the firmware project (targets/mcu/project.py); `Module.run`
builds its test firmware and runs it on QEMU's board for the CPU (targets/mcu/runner.py).
"""

from __future__ import annotations

from typing import Any

from edlc.errors import TargetError
from edlc.target import Target, register_runner, register_target

MB = 1 << 20
# QEMU's MPS2 boards (Cortex-M3/M4/M7): 4 MB of SSRAM at 0 for code, 4 MB at 0x20000000.
_MPS2 = {"flash": (0x00000000, 4 * MB), "ram": (0x20000000, 4 * MB)}

CPUS: dict[str, dict[str, Any]] = {
    "cortex-m0plus": {
        "llvm": {"mtriple": "thumbv6m-none-eabi", "mcpu": "cortex-m0plus", "mfloat-abi": "soft"},
        "cflags": ["-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"],
        # no Cortex-M0+ board in QEMU: the M3 of AN385 runs ARMv6-M code unchanged
        "machine": "mps2-an385", "board": "MPS2 AN385 (Cortex-M3 running ARMv6-M code)",
        "features": {"fpu": False, "dsp": False, "mve": False}, **_MPS2},
    "cortex-m4": {
        "llvm": {"mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m4",
                 "mattr": ["+dsp", "+vfp4d16sp"], "mfloat-abi": "hard"},
        "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
        "machine": "mps2-an386", "board": "MPS2 AN386 (Cortex-M4)",
        "features": {"fpu": True, "dsp": True, "mve": False}, **_MPS2},
    "cortex-m7": {
        "llvm": {"mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m7",
                 "mattr": ["+dsp", "+fp-armv8d16sp"], "mfloat-abi": "hard"},
        "cflags": ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"],
        "machine": "mps2-an500", "board": "MPS2 AN500 (Cortex-M7)",
        "features": {"fpu": True, "dsp": True, "mve": False}, **_MPS2},
    "cortex-m55": {
        "llvm": {"mtriple": "thumbv8.1m.main-none-eabihf", "mcpu": "cortex-m55",
                 "mattr": ["+mve.fp", "+fp-armv8d16sp"], "mfloat-abi": "hard"},
        "cflags": ["-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"],
        # AN547 boots from its ITCM (512 KB) and has 2 MB of SRAM at 0x01000000... but its
        # secure start-up differs from MPS2; the firmware here is linked for code in the SRAM
        "machine": "mps3-an547", "board": "MPS3 AN547 (Cortex-M55)",
        "features": {"fpu": True, "dsp": True, "mve": True},
        "flash": (0x00000000, 512 * 1024), "ram": (0x21000000, 4 * MB)},
}
LLVM_OPT_LEVEL = 2  # about 3x smaller thumb kernels than -O3, no slower (measured)


def _mattr(cpu: str, mattr: list[str] | str | None) -> list[str]:
    base = list(CPUS[cpu]["llvm"].get("mattr", []))
    given = mattr.split(",") if isinstance(mattr, str) else list(mattr or [])
    for a in (s.strip() for s in given):
        if a:
            a = a if a[0] in "+-" else "+" + a
            if a not in base:
                base.append(a)
    return base


def mcu_target(cpu: str, mattr: list[str] | str | None = None, codegen: str = "llvm") -> Target:
    """The Target for a Cortex-M CPU; `codegen` "c" makes C99 kernels instead of LLVM's."""
    if cpu not in CPUS:
        raise TargetError(f"unknown microcontroller CPU '{cpu}'; known: {', '.join(CPUS)}")
    c = CPUS[cpu]
    if codegen == "c":
        if mattr:
            raise TargetError("target 'c' takes no --mattr: the C compiler's flags decide")
        tvm_target: dict[str, Any] = {"kind": "c"}
        name, how = "c", "portable C99 kernels"
    else:
        tvm_target = {"kind": "llvm", **c["llvm"], "opt-level": LLVM_OPT_LEVEL}
        attrs = _mattr(cpu, mattr)
        if attrs:
            tvm_target["mattr"] = attrs
        name, how = cpu, "LLVM thumb kernels"
    mcu = {"cpu": cpu, "cflags": c["cflags"], "machine": c["machine"], "board": c["board"],
           "flash": list(c["flash"]), "ram": list(c["ram"])}
    return Target(name, tvm_target, cc="arm-none-eabi-gcc", runner="qemu-system-arm",
                  features=dict(c["features"]), mcu=mcu,
                  description=f"{cpu} firmware ({how}), run here on QEMU {c['machine']}")


def _register(cpu: str) -> None:
    def factory(mattr: list[str] | str | None = None) -> Target:
        return mcu_target(cpu, mattr)

    register_target(cpu, f"{cpu} microcontroller: firmware project (AOT), run here on QEMU "
                         f"{CPUS[cpu]['machine']}")(factory)


for _cpu in CPUS:
    _register(_cpu)


@register_target("c", "portable C99 kernels for any microcontroller (firmware project; --mcpu "
                      "picks the test CPU, default cortex-m4)")
def c_target(mcpu: str | None = None) -> Target:
    return mcu_target(mcpu or "cortex-m4", codegen="c")


def _runner():
    from edlc.targets.mcu.runner import QemuSystemArmRunner

    return QemuSystemArmRunner()


register_runner("qemu-system-arm", _runner)
