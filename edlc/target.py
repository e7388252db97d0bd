"""Targets: what edlc builds for and how built code runs.

A Target names a TVM target (dict form: TVM 0.27 rejects flag strings), a host, the compiler
that links the shared library, the runner that executes built code, and its default tuning
settings. Targets register by name (`x86`, `arm`, `cortex-m4`, ...) with a factory that takes
options (`mcpu`, `mattr`) and returns a Target.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edlc.errors import TargetError

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Target:
    name: str
    tvm: dict[str, Any]  # TVM target in dict form
    host: dict[str, Any] | None = None
    cc: str | None = None  # compiler/linker for the shared library; None = host default
    runner: str = "local"  # local (in this process, GPU included) | qemu-aarch64 | qemu-system-arm
    description: str = ""
    features: dict[str, bool] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    # microcontrollers: cpu, C flags, QEMU board, memory map; such a target builds a firmware
    # project ahead of time (no TVM runtime) instead of a shared library
    mcu: dict[str, Any] | None = None

    def tvm_target(self):
        import tvm

        if self.host:
            return tvm.target.Target(self.tvm, host=self.host)
        return tvm.target.Target(self.tvm)

    @property
    def device(self) -> str:
        """Where the kernels run: "cuda" (a GPU driven from the host code, in this process)
        or "cpu" (the host code's own processor, here or under the runner)."""
        return "cuda" if self.tvm.get("kind") == "cuda" else "cpu"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tvm": self.tvm, "host": self.host, "cc": self.cc,
                "runner": self.runner, "features": self.features,
                **({"mcu": self.mcu} if self.mcu is not None else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Target:
        return cls(d["name"], d["tvm"], d.get("host"), d.get("cc"), d.get("runner", "local"),
                   features=d.get("features", {}), mcu=d.get("mcu"))


TargetFactory = Callable[..., Target]
_TARGETS: dict[str, tuple[TargetFactory, str]] = {}


def register_target(name: str, description: str) -> Callable[[TargetFactory], TargetFactory]:
    def deco(factory: TargetFactory) -> TargetFactory:
        _TARGETS[name] = (factory, description)
        return factory

    return deco


def _ensure_targets() -> None:
    import edlc.targets  # noqa: F401  registers the built-in targets


def available_targets() -> dict[str, str]:
    """Target name -> one-line description."""
    _ensure_targets()
    return {name: desc for name, (_, desc) in sorted(_TARGETS.items())}


def get_target(target: str | Target, **options: Any) -> Target:
    """Resolve a target name (with options such as mcpu, mattr) to a Target."""
    if isinstance(target, Target):
        return target
    _ensure_targets()
    if target not in _TARGETS:
        raise TargetError(f"unknown target '{target}'; available: {', '.join(sorted(_TARGETS))}")
    factory, _ = _TARGETS[target]
    given = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TargetError(f"target '{target}' does not take option(s) {', '.join(unknown)}; "
                          f"it takes {', '.join(accepted) or 'none'}")
    return factory(**given)


class Runner(Protocol):
    """Runs built code somewhere other than this process (an emulator, a board). `bundle` adds
    what the runner needs to an artifact directory being written and returns the added files;
    `run` executes an exported artifact directory on inputs and returns its outputs."""

    def bundle(self, directory: Path, manifest: Mapping[str, Any]) -> list[str]: ...

    def run(self, directory: Path, manifest: Mapping[str, Any],
            inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


_RUNNERS: dict[str, Callable[[], Runner]] = {}


def register_runner(name: str, factory: Callable[[], Runner]) -> None:
    """Register the runner a target names in `Target.runner` (all but "local")."""
    _RUNNERS[name] = factory


def get_runner(name: str) -> Runner | None:
    """The runner for `Target.runner`; None for "local" (in-process on this host)."""
    if name == "local":
        return None
    _ensure_targets()
    if name not in _RUNNERS:
        raise TargetError(f"this edlc cannot run code built for runner '{name}'")
    return _RUNNERS[name]()
