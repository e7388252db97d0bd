"""The pass flags of the `edlc` command: -O, --passes, --disable-pass, --print-ir-after,
--time-passes, --pass-plugin; `edlc passes`, `edlc inspect --passes` and `edlc optimize`."""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from edlc.cli import main
from tests.conftest import ort_run, parse

# A shape subgraph for fold-constants, an Identity for the plugin pass below, a dead node for
# eliminate-dead-code.
MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4] x) => (float[2,4] y) {
    s = Shape(x)
    r = Reshape(x, s)
    i = Identity(r)
    a = Relu(i)
    dead = Neg(x)
    b = Sigmoid(a)
    y = Mul(a, b)
}"""

# A plain function Graph -> PassResult: registered as `drop-identities` when loaded.
PLAIN_PLUGIN = '''
from edlc.pass_manager import PassResult
from edlc.rewrite import Rule, apply_rules, op, var

RULE = Rule("drop-identity", op("Identity", var("x")), rewrite=lambda b, m: m["x"])


def drop_identities(graph):
    """remove Identity nodes (test plugin)"""
    stats = apply_rules(graph, [RULE])
    return PassResult(graph, stats.modified, [f"dropped {stats.applied.get('drop-identity', 0)} Identity node(s)"])


not_a_function = 42


def returns_garbage(graph):
    return graph.nodes
'''

# A module that registers its pass itself when imported.
REGISTERED_PLUGIN = '''
from edlc.pass_manager import PassResult, register_pass


@register_pass("test-cli-count-nodes", "count nodes, change nothing (test plugin)")
def count(graph):
    return PassResult(graph, False, [f"counted {len(graph.nodes)} nodes"])
'''


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(parse(MODEL), path)
    return path


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(textwrap.dedent(PLAIN_PLUGIN))
    return path


def _x():
    return np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)


def _run_artifact(out, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", x=_x())
    capsys.readouterr()
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as z:
        return {k: z[k] for k in z.files}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("edlc: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_time_passes_and_print_ir_after(model, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["compile", str(model), "-o", str(out), "--time-passes",
                 "--print-ir-after", "fold-constants"]) == 0
    text = capsys.readouterr().out
    # --print-ir-after: the graph after constant folding, Shape gone, the shape a constant
    assert "// after fold-constants" in text and "graph g(" in text
    ir = text.split("// after fold-constants", 1)[1]
    assert "Reshape(" in ir and "Shape(" not in ir.replace("Reshape(", "")
    assert text.count("// after ") == 1
    # --time-passes: one row per pass, with node counts before -> after
    assert "ms" in text and "nodes" in text and "changed" in text
    rows = [line for line in text.splitlines() if line.startswith("fold-constants ")]
    assert len(rows) == 1 and "7 ->" in rows[0]
    assert any(line.startswith("eliminate-dead-code ") for line in text.splitlines())
    got = _run_artifact(out, tmp_path, capsys)
    np.testing.assert_allclose(got["y"], ort_run(parse(MODEL), {"x": _x()})["y"], rtol=1e-5, atol=1e-6)


def test_print_ir_after_all_and_disable_pass(model, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["compile", str(model), "-o", str(out), "-O", "0", "--print-ir-after", "all",
                 "--disable-pass", "eliminate-dead-code", "--time-passes"]) == 0
    text = capsys.readouterr().out
    assert "// after fold-constants" in text
    assert "eliminate-dead-code" not in text  # neither run, nor printed, nor timed
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("flags", [
    ["--passes", "fold-constants,no-such-pass"],
    ["--disable-pass", "no-such-pass"],
    ["--print-ir-after", "no-such-pass"],
])
def test_unknown_pass_exits_2_with_one_line_and_no_output(model, tmp_path, capsys, flags):
    out = tmp_path / "art"
    assert main(["compile", str(model), "-o", str(out), *flags]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert flags[0] in line and "unknown pass 'no-such-pass'" in line
    assert "available:" in line and "fold-constants" in line and "eliminate-dead-code" in line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_unknown_pass_in_optimize_and_inspect(model, tmp_path, capsys):
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "nope"]) == 2
    assert main(["inspect", str(model), "--passes", "--disable-pass", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("unknown pass 'nope'") == 2
    assert not (tmp_path / "o.onnx").exists()


def test_pass_plugin_plain_function(model, plugin, tmp_path, capsys):
    out = tmp_path / "art"
    spec = f"{plugin}:drop_identities"
    assert main(["compile", str(model), "-o", str(out), "--pass-plugin", spec, "--time-passes",
                 "--print-ir-after", "drop-identities"]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "//", "graph", "}"))]
    timed = [r for r in rows if r in ("fold-constants", "eliminate-dead-code", "drop-identities")]
    assert timed[-1] == "drop-identities", text  # after the -O pipeline's passes
    ir = text.split("// after drop-identities", 1)[1]
    assert "Identity(" not in ir
    got = _run_artifact(out, tmp_path, capsys)
    np.testing.assert_allclose(got["y"], ort_run(parse(MODEL), {"x": _x()})["y"], rtol=1e-5, atol=1e-6)


def test_pass_plugin_placed_by_passes_and_registered_module(model, plugin, tmp_path, capsys, monkeypatch):
    (tmp_path / "cli_test_registered_plugin.py").write_text(textwrap.dedent(REGISTERED_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", str(model), "--passes", "drop-identities,fold-constants",
                 "--pass-plugin", f"{plugin}:drop_identities",
                 "--pass-plugin", "cli_test_registered_plugin:count"]) == 0
    text = capsys.readouterr().out
    table = text.split("passes (--passes)", 1)[1].splitlines()
    names = [line.split()[0] for line in table if line.startswith("  ") and not line.startswith("      ")]
    # named in --passes: runs there; not named: runs after the list, under its registered name
    assert names == ["pass", "drop-identities", "fold-constants", "test-cli-count-nodes"]
    assert "      dropped 1 Identity node(s)" in text
    assert "      counted " in text
    # `edlc passes` shows plugin passes too, as run on request
    assert main(["passes", "--pass-plugin", f"{plugin}:drop_identities"]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("drop-identities ") and "on request" in line and "remove Identity" in line
               for line in listing.splitlines())


@pytest.mark.parametrize("spec,message", [
    ("{plugin}:no_such_function", "has no function 'no_such_function'"),
    ("{plugin}:not_a_function", "not callable"),
    ("{tmp}/missing.py:f", "no such file"),
    ("edlc_no_such_module_xyz:f", "no module named 'edlc_no_such_module_xyz'"),
    ("{plugin}", "expected MODULE:FUNCTION"),
    ("{broken}:f", "importing"),
])
def test_bad_pass_plugin_exits_2(model, plugin, tmp_path, capsys, spec, message):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(graph):\n    return (\n")
    spec = spec.format(plugin=plugin, tmp=tmp_path, broken=broken)
    out = tmp_path / "art"
    assert main(["compile", str(model), "-o", str(out), "--pass-plugin", spec]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--pass-plugin '{spec}'" in line and message in line
    assert not out.exists()


def test_plugin_returning_a_wrong_type_is_a_bad_input(model, plugin, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--pass-plugin", f"{plugin}:returns_garbage"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "returns-garbage" in line and "PassResult" in line
    assert not out.exists()


def test_passes_lists_levels_and_descriptions(capsys):
    assert main(["passes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in lines}
    assert "-O0+" in by_name["fold-constants"] and "constant" in by_name["fold-constants"]
    assert "-O0+" in by_name["eliminate-dead-code"]
    for line in lines:
        assert len(line.split()) >= 3, line  # name, level, description
        assert "-O" in line or "on request" in line


def test_inspect_passes_shows_counts(model, capsys):
    assert main(["inspect", str(model), "--passes", "fold-constants,eliminate-dead-code"]) == 0
    text = capsys.readouterr().out
    table = text.split("passes (--passes)", 1)[1].splitlines()[1:]
    rows = {line.split()[0]: " ".join(line.split()) for line in table}
    assert rows["pass"] == "pass time nodes changed"
    assert rows["fold-constants"].endswith("ms 7 -> 6 yes")  # the Shape folded away
    assert rows["eliminate-dead-code"].endswith("ms 6 -> 5 yes")  # the dead Neg removed
    assert "nodes: 5" in text
    # -O N alone implies the pipeline report
    assert main(["inspect", str(model), "-O", "0"]) == 0
    text = capsys.readouterr().out
    assert "passes (-O0)" in text and "  fold-constants " in text


def test_inspect_and_optimize_run_the_pipeline_of_the_target(model, tmp_path, capsys):
    """-O3 on a CPU target has the CPU-only passes (Winograd, pointwise matmuls); on cuda it has
    not, as `compile --target cuda` would not run them."""
    assert main(["inspect", str(model), "-O", "3"]) == 0
    assert "  winograd" in capsys.readouterr().out
    assert main(["inspect", str(model), "-O", "3", "--target", "cuda"]) == 0
    assert "  winograd" not in capsys.readouterr().out
    assert main(["optimize", str(model), "-O", "3", "--target", "nope", "-o", str(tmp_path / "o.onnx")]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()


def test_optimize_writes_onnx_that_onnxruntime_runs(model, plugin, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--time-passes", "--pass-plugin",
                 f"{plugin}:drop_identities", "--print-ir-after", "drop-identities"]) == 0
    text = capsys.readouterr().out
    assert "// after drop-identities" in text and "drop-identities" in text
    summary = [line for line in text.splitlines() if line.startswith("optimized ")]
    assert len(summary) == 1 and "7 ->" in summary[0]
    before, after = (int(s) for s in summary[0].split(": ")[1].split(" nodes")[0].split(" -> "))
    opt = onnx.load(out)
    onnx.checker.check_model(opt)
    assert len(opt.graph.node) <= len(parse(MODEL).graph.node) and after <= before
    x = _x()
    np.testing.assert_allclose(ort_run(opt, {"x": x})["y"], ort_run(parse(MODEL), {"x": x})["y"],
                               rtol=1e-5, atol=1e-6)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edlc.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_subprocess_plugin_compile_and_unknown_pass(model, plugin, tmp_path):
    out = tmp_path / "art"
    r = _cli("compile", str(model), "--pass-plugin", f"{plugin}:drop_identities", "--time-passes", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "drop-identities" in r.stdout and (out / "manifest.json").is_file()
    r = _cli("run", str(out))
    assert r.returncode == 0 and "y: float32[2, 4]" in r.stdout
    bad = tmp_path / "bad"
    r = _cli("compile", str(model), "--passes", "fold-constants,nope", "-o", str(bad))
    assert r.returncode == 2
    assert "unknown pass 'nope'" in _one_error_line(r.stderr)
    assert not bad.exists()


def test_two_plugins_giving_one_name_are_refused(model, plugin, tmp_path, capsys):
    other = tmp_path / "other" / "my_plugin.py"
    other.parent.mkdir()
    other.write_text(textwrap.dedent(PLAIN_PLUGIN))
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"),
                 "--pass-plugin", f"{plugin}:drop_identities", "--pass-plugin", f"{other}:drop_identities"]) == 2
    assert "both give a pass named 'drop-identities'" in _one_error_line(capsys.readouterr().err)
    # the same plugin twice is one pass
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"),
                 "--pass-plugin", f"{plugin}:drop_identities", "--pass-plugin", f"{plugin}:drop_identities"]) == 0
