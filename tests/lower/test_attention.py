"""ONNX Attention and RotaryEmbedding lowered by edlc.lower.attention, checked against ONNX's
reference evaluator (the source of the backend conformance data)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import edlc

RTOL, ATOL = 1e-4, 1e-5


def _model(op: str, inputs: dict[str, np.ndarray | None], outputs: list[str],
           opset: int = 23, **attrs) -> onnx.ModelProto:
    """A one-node model; an input given as None is omitted ('' in the node), as is an
    output named ''. Output types come from ONNX shape inference."""
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for name, a in inputs.items() if a is not None
    ]
    node = helper.make_node(op, [n if a is not None else "" for n, a in inputs.items()],
                            outputs, **attrs)
    graph_outputs = [onnx.ValueInfoProto(name=n) for n in outputs if n]
    graph = helper.make_graph([node], op, graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray | None]) -> None:
    """edlc's outputs equal the reference evaluator's, name by name."""
    feeds = {n: a for n, a in feeds.items() if a is not None}
    names = [o.name for o in model.graph.output]
    want = dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))
    got = edlc.compile(model, target="x86").run(feeds)
    for name in names:
        actual = np.asarray(got[name].numpy() if hasattr(got[name], "numpy") else got[name])
        assert actual.shape == want[name].shape, name
        np.testing.assert_allclose(actual, want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def _randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def test_3d_grouped_query(rng: np.random.Generator) -> None:
    """3D inputs split into heads; 3 K/V heads each serve 3 of the 9 query heads."""
    feeds = {"Q": _randn(rng, 2, 4, 72), "K": _randn(rng, 2, 6, 24), "V": _randn(rng, 2, 6, 24)}
    _check(_model("Attention", feeds, ["Y"], q_num_heads=9, kv_num_heads=3), feeds)


def test_4d_bool_mask_shorter_than_keys(rng: np.random.Generator) -> None:
    """A bool mask covering 5 of 6 keys is padded with False; a row with no key left is zeros,
    not NaN."""
    mask = rng.random((4, 5)) > 0.3
    mask[1] = False
    feeds = {"Q": _randn(rng, 2, 3, 4, 8), "K": _randn(rng, 2, 3, 6, 8),
             "V": _randn(rng, 2, 3, 6, 8), "attn_mask": mask}
    _check(_model("Attention", feeds, ["Y"]), feeds)


def test_causal_with_past_and_present(rng: np.random.Generator) -> None:
    """The causal frontier is shifted by the past length; present = past ++ new keys/values."""
    feeds = {"Q": _randn(rng, 1, 2, 3, 8), "K": _randn(rng, 1, 2, 3, 8),
             "V": _randn(rng, 1, 2, 3, 8), "attn_mask": None,
             "past_key": _randn(rng, 1, 2, 4, 8), "past_value": _randn(rng, 1, 2, 4, 8)}
    model = _model("Attention", feeds, ["Y", "present_key", "present_value"], is_causal=1)
    _check(model, feeds)


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_softcap_and_qk_output(rng: np.random.Generator, mode: int) -> None:
    """Softcap comes before the float mask; the 4th output shows the requested stage."""
    feeds = {"Q": _randn(rng, 2, 3, 4, 8), "K": _randn(rng, 2, 3, 6, 8),
             "V": _randn(rng, 2, 3, 6, 8), "attn_mask": _randn(rng, 4, 6)}
    model = _model("Attention", feeds, ["Y", "", "", "qk"], softcap=2.0,
                   qk_matmul_output_mode=mode)
    _check(model, feeds)


def test_causal_nonpad_kv_seqlen_at_run_time(rng: np.random.Generator) -> None:
    """Opset 24 external KV cache: per-batch valid lengths, given at run time, pad keys out
    and place the causal frontier at the end of the valid keys."""
    feeds = {"Q": _randn(rng, 3, 2, 2, 8), "K": _randn(rng, 3, 2, 6, 8),
             "V": _randn(rng, 3, 2, 6, 8), "attn_mask": None, "past_key": None,
             "past_value": None, "nonpad_kv_seqlen": np.array([2, 5, 6], np.int64)}
    _check(_model("Attention", feeds, ["Y"], opset=24, is_causal=1), feeds)


def test_rotary_embedding_3d_interleaved_partial(rng: np.random.Generator) -> None:
    """Interleaved pairs of the first 4 of 8 features per head, angles picked by position."""
    feeds = {"X": _randn(rng, 2, 3, 16), "cos": _randn(rng, 10, 2), "sin": _randn(rng, 10, 2),
             "pos": rng.integers(0, 10, (2, 3)).astype(np.int64)}
    model = _model("RotaryEmbedding", feeds, ["Y"], num_heads=2, interleaved=1,
                   rotary_embedding_dim=4)
    _check(model, feeds)
