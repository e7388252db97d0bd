"""Model importers: ONNX today."""

from edlc.frontend.onnx import load_onnx, to_onnx

__all__ = ["load_onnx", "to_onnx"]
