"""The sparsity report: per layer what was removed and what is left, the model size before
and after, the estimated speedup (FLOPs) and, where measured, the real one and the output
error against the dense model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edlc.artifact import json_safe


@dataclass
class LayerSparsity:
    name: str
    op: str  # Conv | Gemm | MatMul | edlc.bsr_matmul | ...
    kind: str  # channel | inputs (only input channels removed) | block | nm | dense
    sparsity: float  # fraction of the layer's weights removed (or zero)
    params_before: int
    params_after: int  # kept weights (stored values)
    detail: str = ""  # e.g. "64 -> 32 channels (group of 5)", or why it was left dense


@dataclass
class SparsityReport:
    spec: str
    layers: list[LayerSparsity] = field(default_factory=list)
    size_before: int = 0  # bytes of constants
    size_after: int = 0
    flops_before: int | None = None
    flops_after: int | None = None
    output_error: dict[str, float] = field(default_factory=dict)  # relative L2 error per output
    measured_speedup: float | None = None  # dense latency / sparse latency, when measured

    @property
    def estimated_speedup(self) -> float | None:
        """Dense FLOPs over sparse FLOPs: what skipping the removed work could give at best."""
        if not self.flops_before or not self.flops_after:
            return None
        return self.flops_before / self.flops_after

    @property
    def kept_params(self) -> tuple[int, int]:
        return (sum(r.params_after for r in self.layers), sum(r.params_before for r in self.layers))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["estimated_speedup"] = self.estimated_speedup
        return json_safe(d)

    def summary(self) -> dict:
        """The figures an artifact's manifest keeps."""
        kept, total = self.kept_params
        return json_safe({"spec": self.spec, "layers": len(self.layers),
                        "sparse_layers": sum(r.kind != "dense" for r in self.layers),
                        "kept_params": kept, "params": total,
                        "size_before": self.size_before, "size_after": self.size_after,
                        "estimated_speedup": self.estimated_speedup,
                        "output_error": dict(self.output_error)})

    def format(self) -> str:
        lines = [f"sparsity {self.spec}",
                 f"{'layer':36} {'op':10} {'kind':8} {'sparsity':>8} {'params':>19}  detail"]
        for r in self.layers:
            lines.append(f"{r.name[:36]:36} {r.op[:10]:10} {r.kind:8} {r.sparsity:8.1%} "
                         f"{r.params_before:>9,}->{r.params_after:<9,} {r.detail}")
        kept, total = self.kept_params
        lines.append(f"kept parameters: {kept:,} of {total:,} in these layers ({kept / max(total, 1):.0%})")
        lines.append(f"size: {self.size_before / 1e6:.2f} MB -> {self.size_after / 1e6:.2f} MB "
                     f"({self.size_after / max(self.size_before, 1):.0%})")
        if self.estimated_speedup is not None:
            lines.append(f"FLOPs: {self.flops_before / 1e9:.3f} G -> {self.flops_after / 1e9:.3f} G "
                         f"(estimated speedup {self.estimated_speedup:.2f}x)")
        if self.measured_speedup is not None:
            lines.append(f"measured speedup: {self.measured_speedup:.2f}x")
        for name, err in self.output_error.items():
            lines.append(f"output {name}: relative L2 error vs dense {err:.3g} (one random input)")
        return "\n".join(lines)


def format_summary(summary: dict) -> str:
    """One line from a manifest's "sparsity" entry (what `edlc compile` prints)."""
    est = summary.get("estimated_speedup")
    return (f"sparsity {summary['spec']}: {summary['sparse_layers']} of {summary['layers']} layers "
            f"sparse, kept {summary['kept_params']:,} of {summary['params']:,} parameters, "
            f"weights {summary['size_before'] / 1e6:.2f} MB -> {summary['size_after'] / 1e6:.2f} MB"
            + (f", estimated speedup {est:.2f}x" if est else ""))


__all__ = ["LayerSparsity", "SparsityReport", "format_summary"]
