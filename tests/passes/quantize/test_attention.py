"""int8 attention (edlc.passes.quantize.attention, edlc.lower.int8_attention): the op's kernel
against its numpy reference, its QDQ form against onnxruntime, and the quantizer's rewrite of a
BERT-style encoder's float attention into it."""

import numpy as np
import pytest

import edlc
from edlc.ir import Graph, TensorType
from edlc.ir.interpreter import run_graph
from edlc.passes.quantize import quantize
from edlc.passes.quantize.attention import KV_QMAX
from edlc.passes.quantize.params import sqnr
from edlc.targets.x86 import host_features
from edlc.testing.zoo import bert_encoder, random_inputs
from tests.passes.quantize.helpers import ort_exact


def _qattention(batch, seq, heads, size, *, keys=None, q_zp=120, mask=True, out="uint8") -> Graph:
    keys = keys or seq
    g = Graph("t")
    hidden = heads * size
    q = g.add_input("q", TensorType((batch, seq, hidden), "uint8"))
    k = g.add_input("k", TensorType((batch, keys, hidden), "int8"))
    v = g.add_input("v", TensorType((batch, keys, hidden), "int8"))
    m = g.add_input("m", TensorType((batch, 1, 1, keys), "float32")) if mask else None

    def c(a):
        return g.constant(np.asarray(a))

    ys = [c(np.float32(0.01)), c(np.array(128 if out == "uint8" else -3, out))] if out else []
    ins = [q, c(np.float32(0.05)), c(np.uint8(q_zp)), k, c(np.float32(0.04)), c(np.int8(0)),
           v, c(np.float32(0.03)), c(np.int8(0)), m, *ys]
    n = g.add_node("qattention", ins, {"heads": heads, "scale": 1 / np.sqrt(size)}, domain="edlc", name="att")
    g.outputs.append(n.outputs[0])
    return g


def _feeds(rng, g: Graph) -> dict:
    feeds = {}
    for v in g.inputs:
        if v.type.dtype == "uint8":
            feeds[v.name] = rng.integers(0, 256, v.type.shape).astype(np.uint8)
        elif v.type.dtype == "int8":  # K and V hold 7 bits (the producing matmuls clip them)
            feeds[v.name] = rng.integers(-KV_QMAX, KV_QMAX + 1, v.type.shape).astype(np.int8)
        else:  # BERT's additive mask: 0 or -10000
            feeds[v.name] = np.where(rng.random(v.type.shape) < 0.25, -10000.0, 0.0).astype(np.float32)
    return feeds


def _close(got: np.ndarray, want: np.ndarray, steps: float = 1.0) -> None:
    """Equal but for a rare step: the kernel's exp is a polynomial (within 2e-4 of a P level)
    where the reference calls numpy's, so a P value on a rounding boundary may round the
    other way."""
    assert got.dtype == want.dtype and got.shape == want.shape
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert d.max() <= steps and np.mean(d > 0) < 0.01, (d.max(), np.mean(d > 0))


CASES = [dict(batch=1, seq=32, heads=2, size=64),  # the scheduled kernel (x86 quads)
         dict(batch=2, seq=16, heads=4, size=16, q_zp=0, mask=False, out="int8"),
         dict(batch=1, seq=12, heads=3, size=20, keys=10),  # shapes off the packed blocks: portable form
         dict(batch=1, seq=16, heads=2, size=32, out=None)]  # float output


@pytest.mark.parametrize("case", CASES, ids=["bert", "int8-out", "odd-shapes", "float-out"])
def test_kernel_matches_reference(rng, case):
    g = _qattention(**case)
    m = edlc.compile(g, passes=[])
    assert m.manifest["kernels"] == 1
    for _ in range(2):
        feeds = _feeds(rng, g)
        got, (want,) = m.run(feeds)[g.outputs[0].name], run_graph(g, feeds)
        if case.get("out", "uint8") is None:
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=0.03 * 64 / 255)
        else:
            _close(got, want)


def test_kernel_runs_on_vpmaddubsw(rng):
    if not host_features()["avx2"] or host_features()["vnni"]:
        pytest.skip("the AVX2 uint8 x int8 form")
    m = edlc.compile(_qattention(1, 32, 2, 64), passes=[])
    asm = m.executable.mod.imports[0].inspect_source("asm")
    assert "vpmaddubsw" in asm and "vpmovsxbw" not in asm


@pytest.mark.parametrize("mcpu,instruction", [("znver4", "vpdpbusd"), ("haswell", "vpmaddubsw")])
def test_instruction_per_cpu(mcpu, instruction):
    """Cross-compiled only (the code may not run on this host): the generated assembly."""
    m = edlc.compile(_qattention(1, 32, 2, 64), passes=[], target_options={"mcpu": mcpu})
    asm = m.executable.mod.imports[0].inspect_source("asm")
    assert instruction in asm and "vpmulld" not in asm


def test_k_and_v_are_clipped_to_7_bits(rng):
    """Values past +-64 (no producer of the rewrite makes them) are clipped, in the kernel as in
    the reference: never a saturated int16 pair sum."""
    g = _qattention(1, 16, 1, 32)
    feeds = _feeds(rng, g)
    feeds["k"] = rng.integers(-128, 128, feeds["k"].shape).astype(np.int8)
    feeds["v"] = np.full(feeds["v"].shape, 127, np.int8)
    _close(edlc.compile(g, passes=[]).run(feeds)[g.outputs[0].name], run_graph(g, feeds)[0])


def test_qdq_form_matches_reference(rng):
    """The decomposition (what `edlc quantize` exports) run by onnxruntime: the same values
    within one output step."""
    g = _qattention(1, 16, 2, 32)
    feeds = _feeds(rng, g)
    want = run_graph(g, feeds)[0]
    got = ort_exact(g.to_onnx(), feeds)[g.outputs[0].name]
    _close(got, want)


def test_bert_attention_becomes_one_int8_kernel_per_layer():
    model = bert_encoder(seq=16, layers=2)
    samples = [random_inputs(model, seed=i) for i in range(8)]
    g8, report = quantize(edlc.load_onnx(model), samples)
    ops = [n.op for n in g8.nodes]
    assert ops.count("qattention") == 2 and "Attention" not in ops and "Transpose" not in ops
    for node in (n for n in g8.nodes if n.op == "qattention"):
        q, k, v = (node.inputs[i].producer for i in (0, 3, 6))
        assert [x.op for x in (q, k, v)] == ["qmatmul"] * 3
        # K and V clipped to +-64 steps of their scale: 7 bits, as the kernel needs
        for x in (k, v):
            scale = float(x.inputs[6].const)
            assert x.attrs["clip_max"] == pytest.approx(KV_QMAX * scale) == -x.attrs["clip_min"]
    assert report.sqnr_db > 30
    m = edlc.compile(g8)
    s = samples[0]
    got = m.run(s)["last_hidden_state"]
    assert sqnr(run_graph(g8, s)[0], got) > 50
    assert sqnr(ort_exact(g8.to_onnx(), s)["last_hidden_state"], got) > 45
