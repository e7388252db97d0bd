"""The zoo at -O0, -O2 and -O3: outputs equal to onnxruntime, and the optimizer's structural
promises: on ResNet-18 every conv carries its BN, bias, ReLU and residual add in one group; on
the BERT-style encoder LayerNorm, GELU and attention are recognized; fused groups are single
kernels, so the kernel count drops."""

import pytest

import edlc
from edlc.driver import import_model, optimize
from edlc.testing import zoo
from tests.conftest import assert_matches_ort

SMALL = {"resnet18": lambda: zoo.resnet18(image=64), "mobilenet_v2": lambda: zoo.mobilenet_v2(image=64),
         "bert": lambda: zoo.bert_encoder(seq=32)}


def _optimized(model, level):
    graph, _ = optimize(import_model(model), level)
    graph.verify()
    return graph


def _top_ops(graph):
    return [n.qualified_op for n in graph.nodes]


@pytest.mark.parametrize("level", [0, 2, 3])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_zoo_matches_onnxruntime_at_each_level(name, level):
    model = SMALL[name]()
    module = edlc.compile(model, opt_level=level)
    assert_matches_ort(module, model, zoo.random_inputs(model))
    print(f"{name} -O{level}: {module.manifest['kernels']} kernels")


def test_resnet18_every_conv_is_fused_with_its_epilogues():
    graph = _optimized(SMALL["resnet18"](), 2)
    ops = _top_ops(graph)
    for gone in ("BatchNormalization", "Relu", "Add"):
        assert gone not in ops
    kinds = sorted(n.attrs["kind"] for n in graph.nodes if n.op == "fused")
    # 17 convs followed by ReLU (8 of them through a residual add), the classifier with its bias
    assert kinds.count("Conv+Relu") == 9
    assert kinds.count("Conv+Add+Relu") == 8
    # the three 1x1 downsample convs feed a residual add of another group: BN folded into a
    # bias, which each adds in a group of its own (one kernel, not a conv and an add)
    assert kinds.count("Conv") == 3
    assert "Conv" not in ops


def test_bert_has_layernorm_gelu_and_attention_recognized():
    graph = _optimized(SMALL["bert"](), 2)
    everything = [n.qualified_op for n in graph.all_nodes()]
    assert everything.count("LayerNormalization") == 9
    assert everything.count("edlc::Attention") == 4
    assert everything.count("edlc::Gelu") == 4
    for gone in ("Erf", "Softmax", "ReduceMean", "Sqrt"):
        assert gone not in everything


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fusion_reduces_nodes_and_kernels(name):
    model = SMALL[name]()
    o0, o2 = edlc.compile(model, opt_level=0), edlc.compile(model, opt_level=2)
    assert len(_optimized(model, 2).nodes) < len(_optimized(model, 0).nodes)
    assert o2.manifest["kernels"] < o0.manifest["kernels"]
    print(f"{name}: kernels -O0 {o0.manifest['kernels']}, -O2 {o2.manifest['kernels']}")
