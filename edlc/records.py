"""The tuning-records directory: MetaSchedule's JSON database, checked before use and locked
while tuning.

The database is two files of one JSON value per line: workloads (the kernels), and records
that point at a workload by its line number. TVM refuses the whole database when one line is
bad (a write cut short by a kill, a disk error, a hand edit), and two processes appending to it
at once would number their workloads wrongly. So edlc reads every line with TVM's own parser
first: `edlc tune` repairs the directory it holds the lock of (bad lines go to `*.corrupt`,
records are renumbered), and `compile --records` uses a repaired copy, leaving the directory as
it is. Both report what they left out.

Beside the database, `edlc tune` writes its choices (`edlc_choices.json`): the search measures
each candidate once, so on a machine whose speed drifts the fastest-looking record is often one
measured in a fast moment. Its closing check measures the best records of each kernel and edlc's
default schedule again, side by side, and names the one that wins; the copy `compile` reads keeps
only that record (none where the default schedule won).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edlc.errors import InputError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
LOCK = ".edlc-tune.lock"
CHOICES = "edlc_choices.json"
DEFAULT = "default"  # a choice: edlc's default schedule won the closing check


@dataclass
class RecordsCheck:
    workloads: int = 0
    records: int = 0
    dropped: list[str] = field(default_factory=list)  # "file:line: why"
    chosen: int = 0  # kernels whose schedule the closing check of `edlc tune` chose
    # of those, the workloads (hashes) whose choice was edlc's default schedule (no record)
    default_workloads: list[str] = field(default_factory=list)

    @property
    def kept_default(self) -> int:
        return len(self.default_workloads)

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


def record_key(body: list) -> str:
    """A record's name in the choices: the hash of its trace (the schedule it replays)."""
    return hashlib.sha1(json.dumps(body[0], separators=(",", ":")).encode()).hexdigest()[:16]


def _workload_key(line: str) -> str:
    return str(json.loads(line)[0])  # the workload's structural hash, as TVM writes it


def mean_seconds(run_secs) -> float | None:
    """Mean of a measurement's run times; None when there are none or the candidate failed
    (MetaSchedule records a failure as 1e10 s)."""
    secs = [float(s) for s in (run_secs or [])]
    return sum(secs) / len(secs) if secs and min(secs) < 1e9 else None


def top_records(directory: str | os.PathLike, k: int) -> dict[str, list[list]]:
    """The `k` fastest records of each workload as measured by the search, then every record of
    edlc's own schedules (the default and its variants: traces with no sampled decision), which
    were measured once each; per workload (its structural hash), record bodies, fastest first."""
    workloads, records, _ = _parse(Path(directory))
    by_workload: dict[str, list[tuple[float, list]]] = {}
    for line in records:
        index, body = json.loads(line)
        mean = mean_seconds(body[1])
        if mean is not None:
            by_workload.setdefault(_workload_key(workloads[index]), []).append((mean, body))
    top = {}
    for w, measured in by_workload.items():
        ranked = [b for _, b in sorted(measured, key=lambda x: x[0])]
        top[w] = ranked[:k] + [b for b in ranked[k:] if not b[0][1]]
    return top


def workload_hash(mod) -> str:
    """The structural hash MetaSchedule keys a kernel's workload by (the choices are keyed by it
    too). `mod`: the kernel as a tuning task holds it (normalized to one `main`)."""
    from tvm.s_tir import meta_schedule as ms

    return str(ms.database.Workload(mod).as_json()[0])


def read_choices(directory: str | os.PathLike) -> dict[str, dict]:
    path = Path(directory) / CHOICES
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # unreadable choices: every kernel gets its fastest record, as without them


def write_choices(directory: str | os.PathLike, choices: dict[str, dict]) -> None:
    """Add `choices` (keyed by workload hash) to the directory's, replacing those of the same
    kernels; the choices of other kernels (another model's) stand."""
    _write_choices_file(directory, {**read_choices(directory), **choices})


def forget_choices(directory: str | os.PathLike, workloads: Iterable[str]) -> None:
    """A run that adds records to these kernels makes their choices stale (its own closing check
    writes new ones); the choices of other kernels in the directory stand."""
    choices, stale = read_choices(directory), set(workloads)
    kept = {w: c for w, c in choices.items() if w not in stale}
    if not kept:
        (Path(directory) / CHOICES).unlink(missing_ok=True)
    elif kept != choices:
        _write_choices_file(directory, kept)


def _write_choices_file(directory: str | os.PathLike, choices: dict[str, dict]) -> None:
    _write_atomically(Path(directory) / CHOICES, [json.dumps(choices, indent=1, sort_keys=True)])


def _apply_choices(workloads: list[str], records: list[str], choices: dict[str, dict]
                   ) -> tuple[list[str], dict[str, str]]:
    """The records `compile` sees, and the choices honoured (workload -> its chosen record's key
    or DEFAULT): for a kernel with a choice only the
    chosen record (none where the default schedule won). A choice of a record that is not here
    (the directory was edited since) is ignored."""
    keys = [_workload_key(line) for line in workloads]
    parsed = [(keys[index], body, line) for line in records for index, body in [json.loads(line)]]
    present = {(w, record_key(body)) for w, body, _ in parsed}
    honoured = {w: c["record"] for w, c in choices.items()
                if w in keys and (c.get("record") == DEFAULT or (w, c.get("record")) in present)}
    kept = [line for w, body, line in parsed if w not in honoured or honoured[w] == record_key(body)]
    return kept, honoured


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
    records, honoured = _apply_choices(workloads, records, read_choices(directory))
    check.chosen = len(honoured)
    check.default_workloads = [w for w, record in honoured.items() if record == DEFAULT]
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
