"""RNN, GRU and LSTM lowered by unrolling (edlc.lower.recurrent), checked against onnxruntime
(and ONNX's reference evaluator for layout=1, which onnxruntime does not implement)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.errors import LoweringError
from tests.conftest import ort_run

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 8
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
RTOL, ATOL = 1e-4, 1e-5


def _model(op: str, rng: np.random.Generator, *, direction: str = "forward",
           bias: bool = False, init: bool = False, peepholes: bool = False, layout: int = 0,
           seq_lens=None, outputs: tuple[str, ...] | None = None,
           **attrs) -> tuple[onnx.ModelProto, dict]:
    """A one-node model with random weights; returns it with its input arrays.

    seq_lens: None, "input" (a run-time graph input) or an array (a constant)."""
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]

    def weight(name: str, *shape: int, scale: float = 1.0) -> onnx.TensorProto:
        arr = (rng.standard_normal(shape) * scale).astype(np.float32)
        return numpy_helper.from_array(arr, name)

    inits = [weight("W", dirs, g * HIDDEN, INPUT, scale=0.5),
             weight("R", dirs, g * HIDDEN, HIDDEN, scale=0.5)]
    names = ["X", "W", "R", "", "", "", "", ""]
    x_shape = (BATCH, SEQ, INPUT) if layout else (SEQ, BATCH, INPUT)
    state_shape = (BATCH, dirs, HIDDEN) if layout else (dirs, BATCH, HIDDEN)
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if bias:
        inits.append(weight("B", dirs, 2 * g * HIDDEN))
        names[3] = "B"
    if isinstance(seq_lens, str):
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [BATCH]))
        feeds["lens"] = np.array([SEQ, 2, 4], np.int32)[:BATCH]
        names[4] = "lens"
    elif seq_lens is not None:
        inits.append(numpy_helper.from_array(np.asarray(seq_lens, np.int32), "lens"))
        names[4] = "lens"
    if init:
        states = ["h0", "c0"] if op == "LSTM" else ["h0"]
        for i, s in enumerate(states):
            graph_inputs.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, state_shape))
            feeds[s] = rng.standard_normal(state_shape).astype(np.float32)
            names[5 + i] = s
    if peepholes:
        inits.append(weight("P", dirs, 3 * HIDDEN))
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    outputs = outputs or (("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h"))
    if layout:
        attrs["layout"] = 1
    node = helper.make_node(op, names, list(outputs), hidden_size=HIDDEN, direction=direction,
                            **attrs)
    y_shape = (BATCH, SEQ, dirs, HIDDEN) if layout else (SEQ, dirs, BATCH, HIDDEN)
    graph_outputs = [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape if i == 0 else state_shape)
        for i, o in enumerate(outputs) if o
    ]
    graph = helper.make_graph([node], "rnn", graph_inputs, graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, feeds


def _reference(model: onnx.ModelProto, feeds: dict, use: str) -> dict[str, np.ndarray]:
    if use == "ort":
        return ort_run(model, feeds)
    from onnx.reference import ReferenceEvaluator

    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))


def _check(model: onnx.ModelProto, feeds: dict, use: str = "ort") -> None:
    got = edlc.compile(model, target="x86").run(feeds)
    want = _reference(model, feeds, use)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        np.testing.assert_allclose(got[name], w, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("direction,bias,init,peepholes", [
    ("forward", False, False, False),
    ("reverse", True, True, False),
    ("bidirectional", True, True, True),
    ("forward", True, False, True),
])
def test_lstm(rng, direction, bias, init, peepholes):
    _check(*_model("LSTM", rng, direction=direction, bias=bias, init=init, peepholes=peepholes))


def test_lstm_layout_1(rng):
    _check(*_model("LSTM", rng, direction="bidirectional", bias=True, init=True, layout=1),
           use="onnx")


def test_lstm_clip_input_forget_and_activations(rng):
    _check(*_model("LSTM", rng, bias=True, init=True, peepholes=True, clip=0.7, input_forget=1,
                   activations=["HardSigmoid", "Softsign", "ScaledTanh"],
                   activation_alpha=[0.3, 0.9], activation_beta=[0.4, 1.1]))


def test_lstm_omitted_outputs(rng):
    _check(*_model("LSTM", rng, direction="reverse", bias=True, outputs=("", "Y_h")))
    _check(*_model("LSTM", rng, bias=True, outputs=("Y",)))


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(rng, lbr):
    _check(*_model("GRU", rng, direction="bidirectional", bias=True, init=True,
                   linear_before_reset=lbr))


def test_gru_layout_1(rng):
    _check(*_model("GRU", rng, direction="reverse", bias=True, init=True, layout=1), use="onnx")


def test_gru_activations_and_clip(rng):
    _check(*_model("GRU", rng, bias=True, clip=1.5, activations=["Elu", "Softplus"],
                   activation_alpha=[0.8]))


def test_rnn_default(rng):
    _check(*_model("RNN", rng, bias=True, init=True))


@pytest.mark.parametrize("acts,alpha,beta", [
    (["Relu", "Relu"], None, None),
    (["LeakyRelu", "Affine"], [0.2, 0.5], [0.1]),
    (["ThresholdedRelu", "Sigmoid"], [0.3], None),
])
def test_rnn_activations(rng, acts, alpha, beta):
    extra = {k: v for k, v in (("activation_alpha", alpha), ("activation_beta", beta)) if v}
    _check(*_model("RNN", rng, direction="bidirectional", bias=True, activations=acts, **extra))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_sequence_lens_runtime_input_masks_steps(rng, op):
    """Steps past each entry's length keep the state and give zeros in Y (both directions)."""
    _check(*_model(op, rng, direction="bidirectional", bias=True, init=True, seq_lens="input"))


def test_sequence_lens_constant(rng):
    _check(*_model("GRU", rng, direction="reverse", bias=True, seq_lens=[4, SEQ, 1]))
    _check(*_model("LSTM", rng, bias=True, seq_lens=[SEQ] * BATCH))  # full length: no masks


def test_dynamic_sequence_length_is_a_clear_error(rng):
    model, _ = _model("RNN", rng)
    x = model.graph.input[0].type.tensor_type.shape.dim[0]
    x.Clear()
    x.dim_param = "T"
    with pytest.raises(LoweringError, match="sequence length must be static"):
        edlc.compile(model, target="x86")
