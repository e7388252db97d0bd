"""onnxruntime, the reference every path of edlc is checked and timed against: one way to open
a session, so that tests and benchmarks agree on what "the reference" ran."""

from __future__ import annotations

import numpy as np
import onnx


def ort_session(model: onnx.ModelProto, *, threads: int | None = None, basic: bool = False):
    """A CPU session of `model`. `threads`: intra-op threads (default: onnxruntime's choice).
    `basic`: graph optimizations up to ORT_ENABLE_BASIC only, which leaves a QDQ graph unfused:
    onnxruntime's fused u8s8 kernels saturate int16 sums on CPUs without VNNI, so only the
    unfused form is a bit-exact reference for int8."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # its warnings about unused initializers are noise here
    if threads is not None:
        so.intra_op_num_threads = threads
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_outputs(model: onnx.ModelProto, inputs: dict[str, np.ndarray], **session_options
                ) -> dict[str, np.ndarray]:
    """onnxruntime's outputs for `inputs`, keyed by output name."""
    sess = ort_session(model, **session_options)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
