"""Tuning with tiny trial counts: tune -> records -> compile, resume after a kill, the RPC path
on loopback. (Speed is measured in benchmarks/, never here.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.cli import main
from edlc.tune import count_records, tune
from tests.conftest import ort_run

QUICK = {"population": 16, "trials_per_iter": 2}


def tiny_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _x():
    return {"x": np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)}


def test_tune_then_compile_with_records(tmp_path):
    model = tiny_conv()
    result = tune(model, records=tmp_path / "rec", trials=2, **QUICK)
    assert result.trials_run == 2 and count_records(tmp_path / "rec") == 2
    assert [t.trials for t in result.tasks] == [2]
    module = edlc.compile(model, records=tmp_path / "rec")
    tuning = module.manifest["tuning"]
    # every kernel has a record, or the closing check chose edlc's default schedule for it
    assert len(tuning["kernels_without_record"]) == tuning["kept_default_schedule"]
    np.testing.assert_allclose(module.run(_x())["y"], ort_run(model, _x())["y"], rtol=1e-4, atol=1e-4)
    # the same command again has nothing left to do; a larger total continues
    again = tune(model, records=tmp_path / "rec", trials=2, **QUICK)
    assert again.trials_before == 2 and again.trials_run == 0


def test_compile_reports_missing_records_dir(tmp_path):
    onnx.save(tiny_conv(), tmp_path / "m.onnx")
    code = main(["compile", str(tmp_path / "m.onnx"), "--records", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()


def test_killed_tuning_keeps_records_and_resumes(tmp_path):
    onnx.save(tiny_conv(), tmp_path / "m.onnx")
    rec = tmp_path / "rec"
    cmd = [sys.executable, "-m", "edlc.cli", "tune", str(tmp_path / "m.onnx"), "--trials", "6",
           "--records", str(rec), "--population", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while count_records(rec) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = count_records(rec)
    assert kept >= 2
    first_lines = (rec / "database_tuning_record.json").read_text().splitlines()[:kept]
    assert subprocess.run(cmd, capture_output=True, timeout=900).returncode == 0
    lines = (rec / "database_tuning_record.json").read_text().splitlines()
    assert len(lines) >= 6 and lines[:kept] == first_lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def test_rpc_tracker_and_server_on_loopback(tmp_path):
    from tvm import rpc

    port = _free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        _wait_for_port(port)
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                                   "--key", "edlc-loopback", "--host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while "edlc-loopback" not in str(rpc.connect_tracker("127.0.0.1", port).summary()):
            assert time.monotonic() < deadline, "the RPC server did not register with the tracker"
            time.sleep(0.5)
        result = tune(tiny_conv(), records=tmp_path / "rec", trials=2, rpc_tracker=f"127.0.0.1:{port}",
                      rpc_key="edlc-loopback", **QUICK)
        assert result.trials_run == 2
        assert all(t.best_us is not None for t in result.tasks), "no candidate ran on the RPC server"
    finally:
        for p in (server, tracker):
            if p is not None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials must be at least 1"),
    (["--trials", "2", "--rpc-key", "k"], "--rpc-key needs --rpc-tracker"),
    (["--trials", "2", "--time-budget", "soon"], "time budget 'soon'"),
])
def test_tune_usage_errors(tmp_path, capsys, args, message):
    onnx.save(tiny_conv(), tmp_path / "m.onnx")
    assert main(["tune", str(tmp_path / "m.onnx"), "--records", str(tmp_path / "rec"), *args]) == 2
    assert message in capsys.readouterr().err


def test_first_record_of_each_kernel_is_the_default_schedule(tmp_path):
    """Tuning measures edlc's default schedule first, so the records never lose to untuned code."""
    result = tune(tiny_conv(), records=tmp_path / "rec", trials=1, **QUICK)
    assert result.trials_run == 1 and result.tasks[0].best_us is not None
    record = (tmp_path / "rec" / "database_tuning_record.json").read_text()
    assert "sch.parallel" in record or '"Parallel"' in record  # the default rule's parallel loop nest


def test_variants_of_the_default_schedule_are_measured_and_apply(tmp_path):
    """With trials to spare, the default schedule's variants (register tiles, padding per tile
    or once) are measured before the search; whichever wins, compile applies it and its
    weights are re-laid when compiling."""
    from tvm.s_tir import meta_schedule as ms

    from edlc.schedules import schedule_variants
    from edlc.schedules.analysis import cpu_of
    from edlc.tune import extract

    model = tiny_conv()
    _, target, tasks = extract(model)
    variants = sum(len(schedule_variants(t.dispatched[0]["main"], cpu_of(target))) for t in tasks)
    assert variants >= 2
    tune(model, records=tmp_path / "rec", trials=len(tasks) + variants, **QUICK)
    records = ms.database.JSONDatabase(work_dir=str(tmp_path / "rec")).get_all_tuning_records()
    assert len(records) > len(tasks)
    assert len({str(r.trace) for r in records}) == len(records)  # no schedule measured twice
    module = edlc.compile(model, records=tmp_path / "rec")
    tuning = module.manifest["tuning"]
    assert len(tuning["kernels_without_record"]) == tuning["kept_default_schedule"]
    got, want = module.run(_x()), ort_run(model, _x())
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-4, atol=1e-4)


def test_policy_measures_heavy_tasks_first_then_where_time_goes():
    from edlc.tune import TaskInfo, _Policy

    tasks = [TaskInfo("light", 1, 1.0, 0.1), TaskInfo("heavy", 1, 9.0, 0.9)]
    stop: list[str] = []
    policy = _Policy(tasks, batch=4, trials=100, start=time.monotonic(), budget_s=None, stop=stop)
    assert [policy([False, False]), policy([False, False])] == [1, 0]
    tasks[0].best_us, tasks[1].best_us = 500.0, 100.0  # the light task turned out to take the time
    assert policy([False, False]) == 0
    tasks[0].batches = [500.0, 500.0, 500.0]  # ... but stopped improving
    tasks[1].batches = [200.0, 150.0, 100.0]
    assert policy([False, False]) == 1
    assert policy([False, True]) == 0
    late = _Policy(tasks, batch=4, trials=100, start=time.monotonic() - 10, budget_s=5, stop=stop)
    assert late([False, False]) == -1 and stop == ["time budget"]


def test_kernels_with_fast_math_temporaries_tune():
    """The fast erf/exp forms bind temporaries; MetaSchedule's FLOP estimate aborted on them
    (TVM has no rule for Let), which ended every tuning run of a model with GELU or softmax."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Erf", ["m"], ["y"])]
    g = helper.make_graph(nodes, "erf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    import tempfile

    with tempfile.TemporaryDirectory() as records:
        result = tune(model, records=records, trials=24, **QUICK)  # past the seeds: a search
        assert result.trials_run > 1 and not result.stopped
        x = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
        got = edlc.compile(model, records=records).run(x)["y"]
    np.testing.assert_allclose(got, ort_run(model, x)["y"], rtol=1e-5, atol=1e-5)


def test_tasks_without_a_design_space_keep_their_default_schedule():
    """A task MetaSchedule's rules raise on is left out of the search, reported, not fatal."""
    from edlc.tune import TaskInfo, _searchable

    class Context:
        def __init__(self, fails: bool):
            self.fails = fails

        def generate_design_space(self):
            if self.fails:
                raise RuntimeError("ScheduleError: reverse-compute-at\nmore")
            return [type("Space", (), {"trace": type("Trace", (), {"decisions": {0: 1}})()})()]

    said: list[str] = []
    infos = [TaskInfo(n, 1, 1.0, 0.5) for n in ("conv", "attention", "add")]
    assert _searchable([Context(False), Context(True), Context(False)], infos, said.append) == [0, 2]
    assert len(said) == 1 and "attention" in said[0] and "default schedule" in said[0]


def test_tasks_with_nothing_to_choose_are_not_searched():
    """A design space without a sampled decision (Winograd's transforms) is left out: the
    evolutionary search spun for over ten minutes on one, mutating what has no mutations."""
    from edlc.tune import TaskInfo, _searchable

    class Space:
        def __init__(self, decisions: int):
            self.trace = type("Trace", (), {"decisions": {i: i for i in range(decisions)}})()

    class Context:
        def __init__(self, decisions: int):
            self.decisions = decisions

        def generate_design_space(self):
            return [Space(self.decisions)]

    said: list[str] = []
    infos = [TaskInfo(n, 1, 1.0, 0.5) for n in ("conv", "winograd_input")]
    assert _searchable([Context(3), Context(0)], infos, said.append) == [0]
    assert len(said) == 1 and "winograd_input" in said[0] and "no choices" in said[0]


def test_closing_check_chooses_among_the_records_and_the_default(tmp_path):
    """After the search, the best records and the default schedule are measured again side by
    side; the winner of each kernel is written as a choice that compile honours."""
    import json

    from edlc.records import CHOICES, DEFAULT, RECORDS, record_key

    model = tiny_conv()
    tune(model, records=tmp_path / "rec", trials=6, **QUICK)
    choices = json.loads((tmp_path / "rec" / CHOICES).read_text())
    assert len(choices) == 1
    (choice,) = choices.values()
    assert choice["record"] in choice["measured_us"] and len(choice["measured_us"]) >= 2
    assert choice["us"] == min(choice["measured_us"].values())
    keys = {record_key(json.loads(line)[1]) for line in (tmp_path / "rec" / RECORDS).read_text().splitlines()}
    assert choice["record"] == DEFAULT or choice["record"] in keys
    module = edlc.compile(model, records=tmp_path / "rec")
    assert module.manifest["tuning"]["kept_default_schedule"] == (choice["record"] == DEFAULT)
    np.testing.assert_allclose(module.run(_x())["y"], ort_run(model, _x())["y"], rtol=1e-4, atol=1e-4)
