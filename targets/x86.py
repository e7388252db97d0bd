"""x86-64 CPUs: the host by default, with its CPU model and SIMD features detected."""

from __future__ import annotations

import os
from functools import cache

from edlc.target import Target, register_target


@cache
def host_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@cache
def host_mcpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def host_features() -> dict[str, bool]:
    flags = host_cpu_flags()
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
    }


@register_target("x86", "x86-64 CPU (the host's model and AVX-512/VNNI features by default)")
def x86(mcpu: str | None = None, mattr: list[str] | str | None = None, num_cores: int | None = None) -> Target:
    cores = num_cores or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tvm_target: dict = {"kind": "llvm", "mcpu": mcpu or host_mcpu(), "num-cores": int(cores or 1)}
    if mattr:
        tvm_target["mattr"] = mattr.split(",") if isinstance(mattr, str) else list(mattr)
    features = host_features() if mcpu is None else {}
    return Target("x86", tvm_target, runner="local", features=features,
                  description="x86-64 CPU, built and run on this host")
