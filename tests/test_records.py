"""The records directory: a corrupt line is reported and the good records kept; concurrent
`edlc tune` runs on one directory leave it whole."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.records import CHOICES, RECORDS, WORKLOADS, _parse, count_records
from edlc.tune import tune
from tests.conftest import ort_run
from tests.test_tune import QUICK, tiny_conv


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    rec = tmp_path_factory.mktemp("records") / "rec"
    tune(tiny_conv(), records=rec, trials=2, **QUICK)
    # without the closing check's choices compile takes each kernel's fastest record, so the
    # tests below see a record whichever schedule a noisy check happened to pick
    (rec / CHOICES).unlink(missing_ok=True)
    return rec


def _corrupt(rec):
    lines = (rec / RECORDS).read_text().splitlines()
    with open(rec / RECORDS, "a") as f:
        f.write("this is not json\n")
        f.write(lines[0][: len(lines[0]) // 2] + "\n")  # a write cut short by a kill


def test_compile_leaves_out_corrupt_lines_and_keeps_the_rest(tuned, tmp_path):
    rec = tmp_path / "rec"
    shutil.copytree(tuned, rec)
    _corrupt(rec)
    before = {n: (rec / n).read_bytes() for n in (RECORDS, WORKLOADS)}
    module = edlc.compile(tiny_conv(), records=rec)
    tuning = module.manifest["tuning"]
    assert len(tuning["records_left_out"]) == 2
    assert f"{RECORDS}:3" in tuning["records_left_out"][0]
    assert tuning["kernels_with_record"] and not tuning["kernels_without_record"]
    x = {"x": np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(module.run(x)["y"], ort_run(tiny_conv(), x)["y"], rtol=1e-4, atol=1e-4)
    assert {n: (rec / n).read_bytes() for n in before} == before, "compile must not change the directory"


def test_tune_repairs_the_directory_and_keeps_the_originals(tuned, tmp_path):
    rec = tmp_path / "rec"
    shutil.copytree(tuned, rec)
    _corrupt(rec)
    corrupt_bytes = (rec / RECORDS).read_bytes()
    messages: list[str] = []
    result = tune(tiny_conv(), records=rec, trials=3, progress=messages.append, **QUICK)
    assert any("left out 2 line(s)" in m for m in messages)
    assert (rec / f"{RECORDS}.corrupt").read_bytes() == corrupt_bytes
    _, _, check = _parse(rec)
    assert check.dropped == [] and check.records == count_records(rec) >= 3
    assert result.trials_before == 2


def tiny_matmul() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal((16, 8)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_concurrent_tunes_on_one_directory_leave_it_whole(tmp_path):
    rec = tmp_path / "rec"
    procs = []
    for name, model in (("conv", tiny_conv()), ("mm", tiny_matmul())):
        onnx.save(model, tmp_path / f"{name}.onnx")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "edlc.cli", "tune", str(tmp_path / f"{name}.onnx"), "--trials", "2",
             "--records", str(rec), "--population", "16"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    _, _, check = _parse(rec)
    assert check.dropped == [] and check.workloads >= 2 and check.records >= 4
    for model in (tiny_conv(), tiny_matmul()):
        tuning = edlc.compile(model, records=rec).manifest["tuning"]
        # each kernel has a record, or the closing check chose edlc's default schedule for it
        assert tuning["kernels_with_record"] or tuning["kept_default_schedule"]
        assert len(tuning["kernels_without_record"]) == tuning["kept_default_schedule"]


def test_compile_honours_the_choices_of_the_closing_check(tuned, tmp_path):
    """A chosen record is the only one of its kernel compile sees; a choice of the default
    schedule leaves the kernel without a record (and says so); a stale choice is ignored."""
    import json

    from edlc.records import DEFAULT, readable_copy, record_key, write_choices

    rec = tmp_path / "rec"
    shutil.copytree(tuned, rec)
    (workload,) = [str(json.loads(line)[0]) for line in (rec / WORKLOADS).read_text().splitlines()]
    bodies = [json.loads(line)[1] for line in (rec / RECORDS).read_text().splitlines()]
    assert len(bodies) == 2
    slowest = max(bodies, key=lambda b: sum(b[1]) / len(b[1]))

    def copy_with(choice: str):
        write_choices(rec, {workload: {"record": choice}})
        check = readable_copy(rec, tmp_path / "copy")
        return check, [json.loads(line)[1] for line in (tmp_path / "copy" / RECORDS).read_text().splitlines()]

    check, kept = copy_with(record_key(slowest))
    assert kept == [slowest] and check.chosen == 1 and check.kept_default == 0
    check, kept = copy_with(DEFAULT)
    assert kept == [] and check.kept_default == 1
    module = edlc.compile(tiny_conv(), records=rec)
    tuning = module.manifest["tuning"]
    assert tuning["kept_default_schedule"] == 1 and tuning["kernels_without_record"]
    x = {"x": np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(module.run(x)["y"], ort_run(tiny_conv(), x)["y"], rtol=1e-4, atol=1e-4)
    check, kept = copy_with("0123456789abcdef")  # names no record here
    assert len(kept) == 2 and check.chosen == 0


def test_top_records_keep_every_one_of_edlc_s_own_schedules(tuned, monkeypatch):
    """The closing check measures the search's fastest records and, whatever their first
    measurement, every default schedule and variant (traces with no sampled decision)."""
    import json

    from edlc import records
    from edlc.records import RecordsCheck, top_records

    workloads, lines, _ = _parse(tuned)
    seeded = [json.loads(line)[1] for line in lines]
    assert len(seeded) == 2 and all(not body[0][1] for body in seeded)
    # records of the search (a sampled decision each), measured slower than the seeded ones
    searched = [[[body[0][0], [[0, [k]]]], [1.0] * len(body[1]), *body[2:]]
                for k, body in enumerate(seeded * 2)]
    searched[2][1] = [1e-9] * len(searched[2][1])  # the fastest of all
    fake = lines + [json.dumps([0, b]) for b in searched]
    monkeypatch.setattr(records, "_parse", lambda directory: (workloads, fake, RecordsCheck()))
    (top,) = top_records(tuned, 1).values()
    assert top[0] == searched[2]
    measured = [b for b in seeded if records.mean_seconds(b[1]) is not None]  # not failed runs
    assert measured and sorted(map(json.dumps, top[1:])) == sorted(map(json.dumps, measured))


def test_models_sharing_a_directory_keep_each_other_s_choices(tuned, tmp_path):
    """A tune of one model forgets only its own kernels' choices; compile counts the kernels of
    its own model that kept the default schedule, not the directory's."""
    import json

    from edlc.records import DEFAULT, read_choices, write_choices

    rec = tmp_path / "rec"
    shutil.copytree(tuned, rec)
    (conv_workload,) = [str(json.loads(line)[0]) for line in (rec / WORKLOADS).read_text().splitlines()]
    write_choices(rec, {conv_workload: {"record": DEFAULT}})
    tune(tiny_matmul(), records=rec, trials=2, **QUICK)
    choices = read_choices(rec)
    assert choices[conv_workload] == {"record": DEFAULT}, "the matmul's run dropped the conv's choice"
    conv = edlc.compile(tiny_conv(), records=rec).manifest["tuning"]
    assert conv["kept_default_schedule"] == 1
    assert conv["kernels_kept_default"] == conv["kernels_without_record"] != []
    mm = edlc.compile(tiny_matmul(), records=rec).manifest["tuning"]
    mm_defaults = [c for w, c in choices.items() if w != conv_workload and c["record"] == DEFAULT]
    assert mm["kept_default_schedule"] == len(mm_defaults) == len(mm["kernels_without_record"])
