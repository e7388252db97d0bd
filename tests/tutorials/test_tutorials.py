"""Every tutorial is a runnable script: run each in a fresh folder and expect exit status 0
(each tutorial checks its own results and exits non-zero when they are wrong)."""

import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("*.py"))


def test_tutorials_exist_and_are_listed():
    assert SCRIPTS, f"no tutorials in {TUTORIALS}"
    readme = (TUTORIALS / "README.md").read_text()
    for script in SCRIPTS:
        assert script.name in readme, f"{script.name} is not listed in tutorials/README.md"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_tutorial_runs(script, tmp_path):
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"{script.name} exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
