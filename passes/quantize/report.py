"""The quantization report: per layer its parameters, error (SQNR against the float model)
and whether it stayed float; model size before and after; end-to-end agreement."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edlc.artifact import json_safe


@dataclass
class LayerReport:
    name: str
    op: str  # qconv2d | qmatmul
    status: str  # "int8", "float (fallback)", "float (excluded)"
    input: str = ""  # parameter descriptions
    weight: str = ""
    output: str = ""
    sqnr_db: float | None = None  # at the layer's output, in the int8 model, vs float
    loss_db: float | None = None  # SQNR lost across this layer (input SQNR - output SQNR)


@dataclass
class QuantReport:
    method: str
    activations: str
    samples: int
    layers: list[LayerReport] = field(default_factory=list)
    left_float: list[str] = field(default_factory=list)  # anchors not quantizable, with why
    size_before: int = 0  # bytes of constants
    size_after: int = 0
    output_sqnr_db: dict[str, float] = field(default_factory=dict)
    top1_agreement: float | None = None  # fraction of samples whose argmax matches float
    fallbacks: list[str] = field(default_factory=list)  # layers returned to float, in order
    weights: str = "paired"  # the weight range (edlc.passes.quantize.params.weight_params)

    @property
    def sqnr_db(self) -> float | None:
        """The worst output's SQNR."""
        return min(self.output_sqnr_db.values()) if self.output_sqnr_db else None

    @property
    def drop(self) -> float | None:
        """Top-1 disagreement with the float model, in percentage points."""
        return None if self.top1_agreement is None else 100.0 * (1.0 - self.top1_agreement)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sqnr_db"], d["drop"] = self.sqnr_db, self.drop
        return json_safe(d, infinity=1e9)

    def summary(self) -> dict:
        """The figures an artifact's manifest keeps."""
        return json_safe({"method": self.method, "activations": self.activations,
                          "weights": self.weights, "samples": self.samples,
                          "int8_layers": sum(r.status == "int8" for r in self.layers),
                          "layers": len(self.layers), "fallbacks": list(self.fallbacks),
                          "size_before": self.size_before, "size_after": self.size_after,
                          "sqnr_db": self.sqnr_db, "top1_agreement": self.top1_agreement},
                         infinity=1e9)

    def format(self) -> str:
        lines = [f"int8 quantization ({self.method} calibration on {self.samples} samples, "
                 f"{self.activations} activations, per-channel int8 weights, {self.weights} range)"]
        lines.append(f"{'layer':36} {'op':8} {'status':18} {'SQNR dB':>8} {'loss':>6}  input / output")
        for r in self.layers:
            lines.append(f"{r.name[:36]:36} {r.op:8} {r.status:18} {_db(r.sqnr_db):>8} {_db(r.loss_db):>6}  "
                         f"{r.input or '-'} / {r.output or '-'}")
        for why in self.left_float:
            lines.append(f"  float: {why}")
        n = sum(r.status == "int8" for r in self.layers)
        lines.append(f"layers: {n} of {len(self.layers)} in int8"
                     + (f"; back to float: {', '.join(self.fallbacks)}" if self.fallbacks else ""))
        lines.append(f"size: {self.size_before / 1e6:.2f} MB -> {self.size_after / 1e6:.2f} MB "
                     f"({self.size_after / max(self.size_before, 1):.0%})")
        for name, db in self.output_sqnr_db.items():
            lines.append(f"output {name}: SQNR {_db(db)} dB vs float")
        if self.top1_agreement is not None:
            lines.append(f"top-1 agreement with float: {self.top1_agreement:.1%} "
                         f"(drop {self.drop:.2f} points)")
        return "\n".join(lines)


def _db(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) and x > 0 else f"{x:.1f}"


__all__ = ["LayerReport", "QuantReport"]
