"""The quantization flags of `edlc compile` and the `edlc quantize` command.

    edlc quantize MODEL --calib data.npz -o model.int8.onnx [--calib-method entropy]
                  [--activations uint8|int8] [--weights paired|full|twins] [--max-drop 1.0]
                  [--min-sqnr 25] [--exclude LAYER] [--report report.json]

writes a QDQ ONNX model (QuantizeLinear / DequantizeLinear around float Conv, MatMul) that
onnxruntime runs, and prints the quantization report.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from edlc.passes.quantize.calibrate import METHODS
from edlc.passes.quantize.params import ACT_DTYPES, WEIGHT_RANGES


def add_flags(g) -> None:
    """Flags shared by `compile --quantize int8` and `quantize`."""
    g.add_argument("--calib-method", choices=METHODS, default="minmax",
                   help="how activation ranges are chosen from the calibration data (default minmax)")
    g.add_argument("--percentile", type=float, default=99.99,
                   help="percentile kept by --calib-method percentile (default 99.99)")
    g.add_argument("--activations", choices=ACT_DTYPES, default="uint8",
                   help="activation type: uint8 (asymmetric, default) or int8 (symmetric)")
    g.add_argument("--weights", choices=WEIGHT_RANGES, default="paired",
                   help="weight range: paired (default; each two weights that x86's uint8 x int8 "
                        "multiply-add sums in int16 stay within it, so the fast kernels are exact), "
                        "full ([-127, 127] per channel, slightly finer) or twins (matmul weights "
                        "also within the range of AVX2's twin kernels: faster, slightly coarser)")
    g.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="return the worst layers to float until top-1 agreement with the float "
                        "model drops by at most this many points")
    g.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="return the worst layers to float until every output's SQNR is this high")
    g.add_argument("--exclude", action="append", metavar="LAYER",
                   help="keep this layer (anchor node name) in float (repeatable)")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for `edlc.passes.quantize.quantize` from the flags."""
    return {"method": args.calib_method, "percentile": args.percentile,
            "activations": args.activations, "weights": args.weights, "max_drop": args.max_drop,
            "min_sqnr": args.min_sqnr, "exclude": tuple(args.exclude or ())}


def add_parser(sub) -> None:
    q = sub.add_parser("quantize", help="int8-quantize a model with calibration data; write QDQ ONNX")
    q.add_argument("model", help="ONNX model file")
    q.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                   help="bind an input's shape (repeatable)")
    q.add_argument("--calib", required=True, metavar="DATA.npz",
                   help="calibration inputs: one array per model input, samples along axis 0")
    add_flags(q.add_argument_group("quantization"))
    q.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    q.add_argument("-o", "--output", required=True, help="ONNX file to write")
    q.set_defaults(fn=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    import onnx

    from edlc.artifact import atomic_file
    from edlc.cli import _shapes
    from edlc.driver import import_model
    from edlc.passes.quantize.ptq import quantize

    graph = import_model(args.model, _shapes(args.input_shape))
    qgraph, report = quantize(graph, args.calib, **options(args))
    with atomic_file(args.output) as tmp:
        onnx.save(qgraph.to_onnx(), tmp)
    print(report.format())
    if args.report:
        with atomic_file(args.report) as tmp, open(tmp, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"wrote {args.report}")
    print(f"quantized {args.model} -> {args.output}")
    return 0


__all__ = ["add_flags", "add_parser", "cmd_quantize", "options"]
