"""Passes and the PassManager.

A pass is a function `Graph -> PassResult` registered by name:

    @register_pass("eliminate-dead-code", "remove nodes whose outputs nobody reads")
    def eliminate_dead_code(graph: Graph) -> PassResult: ...

Passes work in place and say whether they changed the graph. The PassManager runs a pipeline
(an opt level's default list, or an explicit one), optionally to a fixed point, times each
pass, verifies the graph after each when asked, and can print the graph after a pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from edlc.errors import EdlcError
from edlc.ir.graph import Graph


@dataclass
class PassResult:
    graph: Graph
    modified: bool
    report: list[str] = field(default_factory=list)  # e.g. "why not fused", one line a rejection


PassFn = Callable[[Graph], PassResult]


@dataclass
class PassInfo:
    name: str
    fn: PassFn
    description: str
    min_opt_level: int  # in the default pipeline from this level on; 99 = only when asked
    fixed_point: bool = False  # run this pass repeatedly until it changes nothing
    # the kinds of target ("cpu", "cuda", "mcu") whose default pipeline has it; None: all
    devices: tuple[str, ...] | None = None


_PASSES: dict[str, PassInfo] = {}
# Order of the default pipeline; passes join it by registering with a min_opt_level.
_DEFAULT_ORDER: list[str] = []


def register_pass(name: str, description: str, min_opt_level: int = 99,
                  fixed_point: bool = False,
                  devices: tuple[str, ...] | None = None) -> Callable[[PassFn], PassFn]:
    """Register `fn` under `name`; it joins the default pipeline at `min_opt_level` and up,
    in registration order, for the kinds of target in `devices` (all when None). `fixed_point`
    passes are repeated until they change nothing."""

    def deco(fn: PassFn) -> PassFn:
        _PASSES[name] = PassInfo(name, fn, description, min_opt_level, fixed_point,
                                 tuple(devices) if devices is not None else None)
        if name not in _DEFAULT_ORDER:
            _DEFAULT_ORDER.append(name)
        return fn

    return deco


def _ensure_passes() -> None:
    import edlc.passes  # noqa: F401  registers the built-in passes


def available_passes() -> dict[str, PassInfo]:
    _ensure_passes()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> PassInfo:
    _ensure_passes()
    if name not in _PASSES:
        raise EdlcError(f"unknown pass '{name}'; available: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def device_kind(target) -> str:
    """"mcu", "cuda" or "cpu": the kind of an edlc Target, as PassInfo.devices names it."""
    if getattr(target, "mcu", None) is not None:
        return "mcu"
    return target.device


def default_pipeline(opt_level: int, target=None) -> list[str]:
    """The passes of `opt_level`, for `target` (an edlc Target) when given: passes made for
    other kinds of target are left out (with no target, none is)."""
    if not 0 <= opt_level <= 3:
        raise EdlcError(f"opt level must be 0..3, got {opt_level}")
    _ensure_passes()
    kind = device_kind(target) if target is not None else None
    return [n for n in _DEFAULT_ORDER if _PASSES[n].min_opt_level <= opt_level
            and (kind is None or _PASSES[n].devices is None or kind in _PASSES[n].devices)]


@dataclass
class PassRecord:
    name: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int
    report: list[str] = field(default_factory=list)


@dataclass
class PassManager:
    """Runs passes in order; `fixed_point` repeats the whole list until nothing changes."""

    passes: Sequence[str | PassInfo]  # names, or passes with their options bound
    # EDLC_VERIFY_EACH=1 (the test suite sets it) verifies the graph after every pass everywhere
    verify_each: bool = field(default_factory=lambda: os.environ.get("EDLC_VERIFY_EACH") == "1")
    print_after: Iterable[str] = ()
    fixed_point: bool = False
    max_iterations: int = 8
    disabled: Iterable[str] = ()
    printer: Callable[[str], None] = print
    records: list[PassRecord] = field(default_factory=list)

    @classmethod
    def for_opt_level(cls, opt_level: int, target=None, **kwargs) -> PassManager:
        return cls(default_pipeline(opt_level, target), **kwargs)

    def run(self, graph: Graph) -> Graph:
        disabled = set(self.disabled)
        infos = [n if isinstance(n, PassInfo) else get_pass(n) for n in self.passes
                 if (n.name if isinstance(n, PassInfo) else n) not in disabled]
        print_after = set(self.print_after)
        for _ in range(self.max_iterations if self.fixed_point else 1):
            changed = False
            for info in infos:
                before = len(graph.nodes)
                t0 = time.perf_counter()
                result = info.fn(graph)
                modified, report = result.modified, list(result.report)
                for _ in range(self.max_iterations - 1 if info.fixed_point and result.modified else 0):
                    result = info.fn(result.graph)
                    report = list(result.report)
                    if not result.modified:
                        break
                graph = result.graph
                self.records.append(PassRecord(info.name, time.perf_counter() - t0, modified,
                                               before, len(graph.nodes), report))
                changed |= modified
                if self.verify_each:
                    graph.verify()
                if info.name in print_after or "all" in print_after:
                    self.printer(f"// after {info.name}\n{graph}")
            if not changed:
                break
        return graph

    def timing_report(self) -> str:
        return timing_report(self.records)


def timing_report(records: Sequence[PassRecord]) -> str:
    """One line per pass run: time, nodes before -> after, whether it changed the graph."""
    lines = [f"{'pass':32} {'ms':>9} {'nodes':>13}  changed"]
    for r in records:
        lines.append(f"{r.name:32} {r.seconds * 1e3:9.2f} {r.nodes_before:6} -> {r.nodes_after:<5} {'yes' if r.modified else 'no'}")
    return "\n".join(lines)
