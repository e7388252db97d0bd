"""The tuning-records directory: MetaSchedule's JSON database, checked before use and locked
while tuning.

The database is two files of one JSON value per line: workloads (the kernels), and records
that point at a workload by its line number. TVM refuses the whole database when one line is
bad (a write cut short by a kill, a disk error, a hand edit), and two processes appending to it
at once would number their workloads wrongly. So edlc reads every line with TVM's own parser
first: `edlc tune` repairs the directory it holds the lock of (bad lines go to `*.corrupt`,
records are renumbered), and `compile --records` uses a repaired copy, leaving the directory as
it is. Both report what they left out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edlc.errors import InputError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
LOCK = ".edlc-tune.lock"


@dataclass
class RecordsCheck:
    workloads: int = 0
    records: int = 0
    dropped: list[str] = field(default_factory=list)  # "file:line: why"

    def report(self, directory: Path) -> str:
        shown = "; ".join(self.dropped[:5]) + (f"; and {len(self.dropped) - 5} more" if len(self.dropped) > 5 else "")
        return (f"tuning records '{directory}': left out {len(self.dropped)} line(s) that do not parse "
                f"({shown}); kept {self.records} record(s)")


def count_records(directory: str | os.PathLike) -> int:
    path = Path(directory) / RECORDS
    if not path.is_file():
        return 0
    with open(path, errors="replace") as f:
        return sum(1 for line in f if line.strip())


def check_dir(directory: str | os.PathLike) -> Path:
    """A records directory `compile --records` can read: it must be what `edlc tune` wrote."""
    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"tuning records '{path}': no such directory (make one with `edlc tune ... --records {path}`)")
    for name in (WORKLOADS, RECORDS):
        if not (path / name).is_file():
            raise InputError(f"tuning records '{path}': {name} is missing; is this a directory written by `edlc tune`?")
    return path


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(errors="replace").splitlines()


def _parse(directory: Path) -> tuple[list[str], list[str], RecordsCheck]:
    """(good workload lines, good record lines renumbered to them, what was dropped)."""
    from tvm.s_tir import meta_schedule as ms

    check = RecordsCheck()
    workloads: list[str] = []
    parsed: dict[int, object] = {}  # old line index -> Workload
    renumber: dict[int, int] = {}
    for n, line in enumerate(_lines(directory / WORKLOADS)):
        if not line.strip():
            continue
        try:
            parsed[n] = ms.database.Workload.from_json(json.loads(line))
        except Exception as e:  # noqa: BLE001  any line TVM cannot read is dropped
            check.dropped.append(f"{WORKLOADS}:{n + 1}: {_why(e)}")
            continue
        renumber[n] = len(workloads)
        workloads.append(line)
    records: list[str] = []
    for n, line in enumerate(_lines(directory / RECORDS)):
        if not line.strip():
            continue
        try:
            index, body = json.loads(line)
            if index not in parsed:
                raise ValueError(f"workload {index} does not exist or was dropped")
            ms.database.TuningRecord.from_json(body, parsed[index])
        except Exception as e:  # noqa: BLE001
            check.dropped.append(f"{RECORDS}:{n + 1}: {_why(e)}")
            continue
        records.append(json.dumps([renumber[index], body]))
    check.workloads, check.records = len(workloads), len(records)
    return workloads, records, check


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:120]


def _write_atomically(path: Path, lines: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def repair(directory: str | os.PathLike) -> RecordsCheck:
    """Drop the lines TVM cannot read from a records directory this process holds the lock of;
    the originals of changed files are kept beside them as `*.corrupt`."""
    path = Path(directory)
    workloads, records, check = _parse(path)
    if check.dropped:
        for name, lines in ((WORKLOADS, workloads), (RECORDS, records)):
            original = path / name
            if original.is_file():
                (path / f"{name}.corrupt").write_bytes(original.read_bytes())
            _write_atomically(original, lines)
    return check


def readable_copy(directory: str | os.PathLike, into: str | os.PathLike) -> RecordsCheck:
    """Write the good lines of `directory` to `into` (for `compile`, which must not change the
    user's directory, perhaps being tuned into at the time)."""
    workloads, records, check = _parse(check_dir(directory))
    target = Path(into)
    target.mkdir(parents=True, exist_ok=True)
    _write_atomically(target / WORKLOADS, workloads)
    _write_atomically(target / RECORDS, records)
    return check


@contextlib.contextmanager
def locked(directory: str | os.PathLike, wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the records directory for one tuning run. A second `edlc tune` on it waits (saying
    for whom) instead of interleaving its workloads and records with the first one's."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if wait is not None:
                wait(f"tuning: {path} is being tuned by {holder}; waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
