"""Atomic writes: the leftovers of a killed writer are cleaned by the next one, and an artifact
caught between the two renames that replace it is put back, not lost."""

import os
import subprocess
import sys

import pytest

from edlc.artifact import atomic_directory, atomic_file, remove_stale
from edlc.errors import ArtifactError


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temporaries_are_removed(tmp_path, dead_pid):
    out = tmp_path / "art"
    (tmp_path / f".art.tmp-{dead_pid}-x1").mkdir()
    (tmp_path / f".art.tmp-{dead_pid}-x2").write_text("half")
    live = tmp_path / f".art.tmp-{os.getpid()}-x3"  # a writer still at work keeps its files
    live.mkdir()
    with atomic_directory(out) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "art"]


def test_an_artifact_caught_between_renames_is_put_back(tmp_path, dead_pid):
    aside = tmp_path / f".art.old-{dead_pid}-x"
    (aside / "a").mkdir(parents=True)
    (aside / "a" / "manifest.json").write_text('{"format": 1}')
    remove_stale(tmp_path / "art")
    assert (tmp_path / "art" / "manifest.json").read_text() == '{"format": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_a_failed_write_keeps_the_old_artifact(tmp_path):
    out = tmp_path / "art"
    with atomic_directory(out) as tmp:
        (tmp / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "manifest.json").write_text("new")
        raise RuntimeError("the build failed")
    assert (out / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_atomic_file_and_foreign_directories(tmp_path):
    with atomic_file(tmp_path / "f.onnx") as tmp, open(tmp, "w") as f:
        f.write("x")
    assert sorted(os.listdir(tmp_path)) == ["f.onnx"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ArtifactError, match="not an edlc artifact"), atomic_directory(tmp_path / "mine"):
        pass
