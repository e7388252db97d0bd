"""The artifact directory: `model.so` (or the target's library), `params.npz`, `manifest.json`.

Written atomically: everything goes to a temporary sibling directory that is renamed into
place only when complete, so a failed or killed compile leaves no half artifact behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edlc.errors import ArtifactError

MANIFEST = "manifest.json"
LIBRARY = "model.so"
PARAMS = "params.npz"
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out` when the block succeeds.

    An existing `out` is replaced only if it is an edlc artifact (has a manifest) or empty;
    anything else is refused so no user data is deleted."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ArtifactError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise ArtifactError(f"{out}: exists, is not empty and is not an edlc artifact; refusing to overwrite it")
    with _reported(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(out, "tmp"), dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(out, "old"), dir=out.parent))
            os.rename(out, old / "a")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `out` that replaces it when the block succeeds."""
    out = Path(out)
    if out.is_dir():
        raise ArtifactError(f"{out}: is a directory; give a file name")
    with _reported(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(out, "tmp"), dir=out.parent)
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _reported(out: Path) -> Iterator[None]:
    """A folder that cannot be made or written is the user's to fix: say so in one line."""
    try:
        yield
    except OSError as e:
        raise ArtifactError(f"{out}: cannot write here ({e.strerror or e})") from e


def json_safe(x: Any, infinity: float | None = None) -> Any:
    """`x` (dicts, lists, numbers) with what JSON cannot hold replaced: NaN by null, and an
    infinity by null or, given `infinity`, by that value with its sign (an exact SQNR is inf)."""
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) or infinity is None else (infinity if x > 0 else -infinity)
    if isinstance(x, dict):
        return {k: json_safe(v, infinity) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v, infinity) for v in x]
    return x


def _prefix(out: Path, kind: str) -> str:
    """Temporary siblings of `out` carry the writer's pid, so a later run can tell the leftovers
    of a killed process from the work of a live one."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: str | os.PathLike) -> None:
    """Remove the temporary siblings of `out` that a killed edlc left behind. A kill between
    the two renames that replace an artifact leaves `out` missing and the old one aside: it is
    put back."""
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[^/]*")
    for path in map(Path, glob.glob(os.path.join(glob.escape(str(out.parent)), f".{glob.escape(out.name)}.*-*"))):
        m = pattern.fullmatch(path.name)
        if m is None or _alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists() and (path / "a").exists():
            os.rename(path / "a", out)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def write_params(directory: Path, params: dict[str, np.ndarray]) -> None:
    np.savez(directory / PARAMS, **params)


def read_artifact(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Manifest and params of an artifact directory, checked for completeness."""
    d = Path(directory)
    if not (d / MANIFEST).is_file():
        raise ArtifactError(f"{d}: not an edlc artifact (no {MANIFEST})")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{d / MANIFEST}: unreadable manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{d}: artifact format {found!r}, this edlc reads {FORMAT_VERSION}")
    _check_manifest(d, manifest)
    for f in manifest.get("files", []):
        if not (d / f).is_file():
            raise ArtifactError(f"{d}: artifact is incomplete: {f} is missing")
    params: dict[str, np.ndarray] = {}
    if (d / PARAMS).is_file():
        try:
            with np.load(d / PARAMS, allow_pickle=False) as z:
                params = {k: _bfloat16(z[k]) for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ArtifactError(f"{d / PARAMS}: unreadable weights ({e}); compile the model again") from e
    missing = [p for p in manifest.get("params", []) if p not in params]
    if missing:
        raise ArtifactError(f"{d / PARAMS}: weights {missing[:5]} listed in the manifest are missing")
    return manifest, params


def _bfloat16(a: np.ndarray) -> np.ndarray:
    """numpy stores ml_dtypes' bfloat16 as raw 2-byte records (V2): read them back as such."""
    if a.dtype == np.dtype("V2"):
        import ml_dtypes

        return a.view(ml_dtypes.bfloat16)
    return a


def _check_manifest(d: Path, manifest: dict[str, Any]) -> None:
    """The fields loading and running read, with their types: a hand-edited or truncated
    manifest is reported here rather than as a KeyError later."""
    def spec_ok(s: Any) -> bool:
        return (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("dtype"), str)
                and (s.get("shape") is None or isinstance(s.get("shape"), list)))

    target = manifest.get("target")
    problems = [
        ("target", isinstance(target, dict) and isinstance(target.get("name"), str) and "tvm" in target),
        ("inputs", isinstance(manifest.get("inputs"), list) and all(map(spec_ok, manifest["inputs"]))),
        ("outputs", isinstance(manifest.get("outputs"), list) and all(map(spec_ok, manifest["outputs"]))),
        ("params", isinstance(manifest.get("params", []), list)),
        ("files", isinstance(manifest.get("files", []), list)
         and all(isinstance(f, str) and not os.path.isabs(f) and ".." not in Path(f).parts
                 for f in manifest.get("files", []))),
    ]
    bad = [name for name, ok in problems if not ok]
    if bad:
        raise ArtifactError(f"{d / MANIFEST}: malformed field(s) {', '.join(bad)}; compile the model again")
