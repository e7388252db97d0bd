"""Fuzz cases run in a child process with a per-case time limit and a memory cap, so a hang
(a case over its time) or a crash (a signal, an abort in C++ code) is caught, reported and
followed by a fresh child, instead of taking the test run or the machine down with it.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from edlc.testing.fuzz.check import Case, check_case, prepare_folder

# a case may use this much memory; a bigger allocation fails in the child (MemoryError, an
# escape) instead of exhausting the machine
MEMORY_LIMIT = 4 << 30
LOG = "child.log"


@dataclass
class Outcome:
    """kind: "ok", "error" (an EdlcError: fine), "escape" (any other exception), "crash"
    (the child died), "hang" (over the time limit). `detail`: the error class, the traceback,
    the signal."""

    kind: str
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.kind in ("escape", "crash", "hang")

    @property
    def signature(self) -> str:
        """What identifies a finding across cases: the exception and where it was raised."""
        if self.kind != "escape":
            return f"{self.kind}: {self.detail.splitlines()[-1] if self.detail else ''}"
        lines = self.detail.strip().splitlines()
        frames = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
        # names and numbers differ from case to case; the message's shape does not
        message = re.sub(r"'[^']*'|\d+", "_", lines[-1])[:160]
        return f"{message} @ {frames[-1] if frames else '?'}"


def _serve(conn: Connection, memory_limit: int, root: str) -> None:
    """The child: run cases from `conn` until it closes, in a model folder under `root`."""
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
    # passes and TVM print; what the current case printed is kept for a crash report
    log = os.open(Path(root) / LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ["EDLC_VERIFY_EACH"] = "1"
    folder = prepare_folder(Path(root))
    while True:
        try:
            number, case = conn.recv()
        except EOFError:
            return
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)
        try:
            result = Outcome("ok") if (kind := check_case(case, folder)) == "ok" else Outcome("error", kind)
        except BaseException:  # noqa: BLE001  everything but EdlcError is a finding
            result = Outcome("escape", traceback.format_exc())
        conn.send((number, result))


class Worker:
    """A child process that runs cases one at a time: `run(case, timeout)` -> Outcome.
    `close()` stops it and removes its files."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT):
        self.memory_limit = memory_limit
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn: Connection | None = None
        self._cases = 0
        self._root = tempfile.mkdtemp(prefix="edlc-fuzz-")

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child, self.memory_limit, self._root),
                                       daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def run(self, case: Case, timeout: float = 30.0) -> Outcome:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None
        self._cases += 1
        deadline = time.monotonic() + timeout
        try:
            self._conn.send((self._cases, case))
            # answers are numbered: one that is not this case's (left in the pipe by a run cut
            # short by an exception) is dropped, not taken for this case's
            while self._conn.poll(max(0.0, deadline - time.monotonic())):
                number, outcome = self._conn.recv()
                if number == self._cases:
                    return outcome
            self._stop()
            return Outcome("hang", self._log_tail() + f"over {timeout:.0f} s")
        except (EOFError, ConnectionError):  # the child died with the case
            self._proc.join(5)
            code = self._proc.exitcode
            self._stop()
            return Outcome("crash", self._log_tail() + f"child exited with {code}"
                           + (" (signal)" if code and code < 0 else ""))

    def _log_tail(self, limit: int = 1500) -> str:
        """The end of what the crashed case printed (a C++ abort's reason, TVM's backtrace)."""
        try:
            text = (Path(self._root) / LOG).read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""
        return text + ("\n" if text and not text.endswith("\n") else "")

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def _stop(self) -> None:
        """Stop the child (kill: a hung case does not listen)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            if self._proc.pid is not None:  # it started
                self._proc.join(5)
            self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
