"""Post-training static int8 quantization (imported as edlc.passes.quantize).

    from edlc.passes.quantize import quantize
    g8, report = quantize(graph, calibration="calib.npz", method="entropy", max_drop=1.0)
    onnx.save(g8.to_onnx(), "model.int8.onnx")    # QDQ ONNX: onnxruntime runs it

Modules: params (scales, zero points, the arithmetic), ops (edlc.qconv2d, edlc.qmatmul),
calibrate (minmax / percentile / entropy), layers (what gets quantized), rewrite (the int8
graph), epilogue (elementwise ops into the int8 kernels), ptq (the whole flow with accuracy
fallback), report; qdq (the import-qdq pass) and layout (the int8-layout pass: NHWC between
int8 convs) run in every compile's pipeline.
"""

# isort: off
from edlc.passes.quantize import (  # noqa: F401  the import order is the passes' order
    ops,  # registers edlc.qconv2d, edlc.qmatmul and edlc.qmaxpool
    qdq,  # registers the import-qdq pass
    layout,  # registers the int8-layout pass, after import-qdq
)
# isort: on
from edlc.passes.quantize.calibrate import METHODS, load_calibration
from edlc.passes.quantize.ptq import prepare, quantize
from edlc.passes.quantize.report import LayerReport, QuantReport

__all__ = ["METHODS", "LayerReport", "QuantReport", "load_calibration", "prepare", "quantize"]
