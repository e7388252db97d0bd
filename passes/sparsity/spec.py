"""The `sparsity=` option as text: `channel:0.5`, `block:4x4:0.9`, `2:4`.

One small parser, so the CLI, `edlc.compile` and the tests read the same spec the same way
and a malformed spec fails with one line that shows the accepted forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edlc.errors import InputError

FORMS = ("channel:RATIO (e.g. channel:0.5), block:RxC:RATIO (e.g. block:4x4:0.9), N:M (e.g. 2:4) "
         "or detect (sparse kernels for weights already sparse)")


@dataclass(frozen=True)
class SparsitySpec:
    """What to prune: whole output channels, weight blocks, or an N:M pattern."""

    kind: str  # "channel" | "block" | "nm" | "detect" (| "existing": a found pattern, kept)
    ratio: float = 0.0  # fraction removed (channel, block)
    block: tuple[int, int] = (1, 1)  # rows x cols of a block (block)
    n: int = 0  # kept values in every group of m (nm)
    m: int = 0

    def __str__(self) -> str:
        if self.kind == "channel":
            return f"channel:{self.ratio:g}"
        if self.kind == "block":
            return f"block:{self.block[0]}x{self.block[1]}:{self.ratio:g}"
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return self.kind


def _ratio(text: str, spec: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise InputError(f"sparsity '{spec}': '{text}' is not a ratio; use {FORMS}") from None
    if not 0.0 <= r < 1.0:
        raise InputError(f"sparsity '{spec}': the ratio must be in [0, 1), got {r:g}")
    return r


def parse_spec(spec: str | SparsitySpec) -> SparsitySpec:
    """`SparsitySpec` from its text form (a spec passes through)."""
    if isinstance(spec, SparsitySpec):
        return spec
    if not isinstance(spec, str):
        raise InputError(f"sparsity must be a string such as 'channel:0.5', not {type(spec).__name__}")
    s = spec.strip().lower()
    if s == "detect":
        return SparsitySpec("detect")
    if m := re.fullmatch(r"channel:([^:]+)", s):
        return SparsitySpec("channel", _ratio(m.group(1), spec))
    if m := re.fullmatch(r"block:(\d+)x(\d+):([^:]+)", s):
        rows, cols = int(m.group(1)), int(m.group(2))
        if rows < 1 or cols < 1:
            raise InputError(f"sparsity '{spec}': block dims must be positive")
        return SparsitySpec("block", _ratio(m.group(3), spec), (rows, cols))
    if m := re.fullmatch(r"(\d+):(\d+)", s):
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise InputError(f"sparsity '{spec}': N:M needs 0 < N < M, got {n}:{mm}")
        return SparsitySpec("nm", n=n, m=mm)
    raise InputError(f"sparsity '{spec}' is not understood; use {FORMS}")


__all__ = ["FORMS", "SparsitySpec", "parse_spec"]
