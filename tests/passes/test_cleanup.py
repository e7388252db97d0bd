import edlc
from edlc.pass_manager import PassManager
from tests.conftest import parse


def test_dead_chains_go_in_one_run():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) {
        d1 = Exp(x)
        d2 = Log(d1)
        y = Relu(x)
    }""")
    pm = PassManager(["eliminate-dead-code"], verify_each=True)
    g = pm.run(edlc.load_onnx(model))
    assert [n.op for n in g.nodes] == ["Relu"]
    assert pm.records[0].modified and pm.records[0].nodes_after == 1
    assert "eliminate-dead-code" in pm.timing_report()
