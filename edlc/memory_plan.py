"""Static memory planning: one arena, an offset for every intermediate tensor and workspace.

A microcontroller has no heap to spare, so the AOT entry computes every tensor into a fixed
offset of one statically allocated arena. Two buffers may share bytes only if their lifetimes
(the steps from the kernel that writes them to the last kernel that reads them) do not overlap.

The peak can never be below the *liveness lower bound*: the largest sum of the sizes of the
buffers live at one step. Placing buffers is a 2-D packing problem (NP-hard in general), so the
planner runs the greedy heuristics TFLite Micro and TVM's USMP use (first fit at the lowest free
offset, in several orders: by size, by size x lifetime, by lifetime, by start) and keeps the
smallest arena. `check` verifies a plan: no two time-overlapping buffers overlap in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ALIGN = 16  # bytes: enough for any load the Cortex-M kernels emit (LDRD/VLDM, MVE q-registers)


@dataclass(frozen=True)
class Buffer:
    """A tensor or kernel workspace: `size` bytes live from step `start` to step `end`
    (inclusive; step i is the i-th kernel call)."""

    name: str
    size: int
    start: int
    end: int

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Plan:
    """Offsets into one arena of `size` bytes; `lower_bound` is the liveness lower bound."""

    offsets: dict[str, int]
    size: int
    lower_bound: int
    algorithm: str
    tried: dict[str, int] = field(default_factory=dict)  # heuristic -> arena size it reached

    @property
    def overhead(self) -> float:
        """How far above the lower bound the arena is (0.05 = 5%)."""
        return self.size / self.lower_bound - 1.0 if self.lower_bound else 0.0


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


def lower_bound(buffers: Sequence[Buffer], align: int = ALIGN) -> int:
    """Max over steps of the bytes live at that step (sizes rounded up to `align`)."""
    if not buffers:
        return 0
    events: dict[int, int] = {}
    for b in buffers:
        events[b.start] = events.get(b.start, 0) + align_up(b.size, align)
        events[b.end + 1] = events.get(b.end + 1, 0) - align_up(b.size, align)
    live = peak = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


def first_fit(buffers: Sequence[Buffer], order: Callable[[Buffer], tuple],
              align: int = ALIGN) -> dict[str, int]:
    """Place buffers in `order`, each at the lowest offset that overlaps no placed buffer live
    at the same time."""
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    for b in sorted(buffers, key=order):
        size = align_up(b.size, align)
        busy = sorted((off, off + align_up(p.size, align)) for p, off in placed
                      if p.overlaps_in_time(b))
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, align_up(hi, align))
        offsets[b.name] = offset
        placed.append((b, offset))
    return offsets


ORDERS: dict[str, Callable[[Buffer], tuple]] = {
    "greedy-by-size": lambda b: (-b.size, b.start, b.name),
    "greedy-by-area": lambda b: (-b.size * (b.end - b.start + 1), -b.size, b.name),
    "greedy-by-lifetime": lambda b: (-(b.end - b.start), -b.size, b.name),
    "greedy-by-start": lambda b: (b.start, -b.size, b.name),
}


def arena_size(buffers: Sequence[Buffer], offsets: dict[str, int], align: int = ALIGN) -> int:
    return max((offsets[b.name] + align_up(b.size, align) for b in buffers), default=0)


def plan(buffers: Sequence[Buffer], align: int = ALIGN) -> Plan:
    """The smallest arena any of the greedy orders reaches (greedy-by-size on ties)."""
    names = [b.name for b in buffers]
    if len(set(names)) != len(names):
        raise ValueError("buffer names must be unique")
    for b in buffers:
        if b.size < 0 or b.start > b.end:
            raise ValueError(f"buffer {b.name}: bad size or lifetime ({b.size} B, {b.start}..{b.end})")
    best: tuple[int, str, dict[str, int]] | None = None
    tried = {}
    for name, order in ORDERS.items():
        offsets = first_fit(buffers, order, align)
        size = arena_size(buffers, offsets, align)
        tried[name] = size
        if best is None or size < best[0]:
            best = (size, name, offsets)
    assert best is not None
    result = Plan(best[2], best[0], lower_bound(buffers, align), best[1], tried)
    check(result, buffers, align)
    return result


def check(p: Plan, buffers: Sequence[Buffer], align: int = ALIGN) -> None:
    """Raise ValueError if two buffers live at the same step share a byte, or if a buffer is
    misaligned or outside the arena."""
    for b in buffers:
        off = p.offsets[b.name]
        if off % align or off < 0 or off + b.size > p.size:
            raise ValueError(f"buffer {b.name} at offset {off} ({b.size} B) is misaligned or "
                             f"outside the {p.size} B arena")
    items = sorted(buffers, key=lambda b: p.offsets[b.name])
    for i, a in enumerate(items):
        a_end = p.offsets[a.name] + a.size
        for b in items[i + 1:]:
            if p.offsets[b.name] >= a_end:
                break
            if a.size and b.size and a.overlaps_in_time(b):
                raise ValueError(f"buffers {a.name} and {b.name} are live at the same time "
                                 "and overlap in the arena")
