"""The artifact directory: `model.so` (or the target's library), `params.npz`, `manifest.json`.

Written atomically: everything goes to a temporary sibling directory that is renamed into
place only when complete, so a failed or killed compile leaves no half artifact behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    if manifest.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{d}: artifact format {manifest.get('format')!r}, this edlc reads {FORMAT_VERSION}")
    for f in manifest.get("files", []):
        if not (d / f).is_file():
            raise ArtifactError(f"{d}: artifact is incomplete: {f} is missing")
    params: dict[str, np.ndarray] = {}
    if (d / PARAMS).is_file():
        with np.load(d / PARAMS, allow_pickle=False) as z:
            params = {k: z[k] for k in z.files}
    return manifest, params
