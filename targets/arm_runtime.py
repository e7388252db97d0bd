"""The TVM runtime for aarch64 Linux boards, and the `run-model` program built against it.

The aarch64 wheels of apache-tvm and apache-tvm-ffi (same versions as the host's, so the
runtime matches the compiler that built `model.so`) carry `libtvm_runtime.so`,
`libtvm_ffi.so` and the tvm-ffi headers. They are downloaded once with pip and unpacked into a
per-user cache:

    $EDLC_CACHE_DIR (default $XDG_CACHE_HOME/edlc, else ~/.cache/edlc)
      aarch64/tvm-<version>-ffi-<version>/
        lib/libtvm_runtime.so, lib/libtvm_ffi.so
        include/            tvm-ffi and dlpack headers
        run-model-<hash>    arm_run_model.cc built with aarch64-linux-gnu-g++

`python -m edlc.targets.arm_runtime` fills the cache (scripts/setup.sh runs it, so a machine
set up while online works offline later).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from importlib import metadata
from pathlib import Path

from edlc.errors import TargetError

CXX = "aarch64-linux-gnu-g++"
PLATFORM = "manylinux_2_28_aarch64"  # the tag PyPI's aarch64 wheels of both packages carry
RUNNER_SOURCE = Path(__file__).with_name("arm_run_model.cc")
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
# wheel member prefix -> where it goes in the cache
_WHEEL_FILES = {
    "apache-tvm": {"tvm/lib/libtvm_runtime.so": "lib/libtvm_runtime.so"},
    "apache-tvm-ffi": {"tvm_ffi/lib/libtvm_ffi.so": "lib/libtvm_ffi.so",
                       "tvm_ffi/include/": "include/"},
}


def cache_root() -> Path:
    if os.environ.get("EDLC_CACHE_DIR"):
        return Path(os.environ["EDLC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edlc"


def versions() -> dict[str, str]:
    """The host's apache-tvm and apache-tvm-ffi versions: the board needs the same."""
    return {p: metadata.version(p) for p in _WHEEL_FILES}


def runtime_dir() -> Path:
    v = versions()
    return cache_root() / "aarch64" / f"tvm-{v['apache-tvm']}-ffi-{v['apache-tvm-ffi']}"


def _complete(d: Path) -> bool:
    return all((d / "lib" / lib).is_file() for lib in RUNTIME_LIBS) and \
        (d / "include" / "tvm" / "ffi" / "function.h").is_file()


def ensure_runtime(download: bool = True) -> Path:
    """The cache directory with the aarch64 runtime libraries and headers; downloads the
    wheels with pip the first time."""
    d = runtime_dir()
    if _complete(d):
        return d
    if not download:
        raise TargetError(f"the aarch64 TVM runtime is not in {d}; run scripts/setup.sh "
                          "(or `python -m edlc.targets.arm_runtime`) while online")
    d.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=d.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        staged = Path(tmp) / "runtime"
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--platform", PLATFORM, "--python-version", py,
               "--timeout", "60", "--retries", "2",
               "-d", str(wheels)] + [f"{p}=={v}" for p, v in versions().items()]
        proc = _pip(cmd)
        if proc.returncode != 0:
            why = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.startswith("ERROR")]
            raise TargetError(
                f"the aarch64 TVM runtime is not in {d} and pip could not download the aarch64 "
                f"wheels ({'; '.join(why)[:300] or 'pip failed'}); run scripts/setup.sh while "
                "online, or point EDLC_CACHE_DIR at a cache filled on another machine")
        for project, members in _WHEEL_FILES.items():
            prefix = project.replace("-", "_") + "-"
            found = [w for w in wheels.iterdir() if w.name.startswith(prefix) and w.suffix == ".whl"]
            if not found:
                raise TargetError(f"pip downloaded no aarch64 wheel of {project}")
            _unpack(found[0], members, staged)
        if not _complete(staged):
            raise TargetError(f"the aarch64 wheels lack {', '.join(RUNTIME_LIBS)} or the headers")
        if _complete(d):  # another process filled it meanwhile
            return d
        if d.exists():  # a half-written cache: replace it
            shutil.rmtree(d, ignore_errors=True)
        try:
            os.rename(staged, d)
        except OSError:  # another process won the race
            if not _complete(d):
                raise
    return d


def _pip(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TargetError(f"downloading the aarch64 TVM runtime failed ({e})") from e


def _unpack(wheel: Path, members: dict[str, str], dest: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            for src, dst in members.items():
                if info.is_dir() or not info.filename.startswith(src):
                    continue
                target = dest / (dst + info.filename[len(src):] if src.endswith("/") else dst)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as f, open(target, "wb") as out:
                    shutil.copyfileobj(f, out)


def _flags(rt: Path) -> list[str]:
    return ["-std=c++17", "-O2", "-s", "-I", str(rt / "include"), "-L", str(rt / "lib"),
            "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,--as-needed",
            "-Wl,-rpath,$ORIGIN/lib"]


@cache
def runner_program() -> Path:
    """`run-model` for aarch64 Linux, built once per runner source and runtime version."""
    rt = ensure_runtime()
    source = RUNNER_SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_flags(Path("."))).encode()).hexdigest()[:12]
    exe = rt / f"run-model-{key}"
    if exe.is_file():
        return exe
    if shutil.which(CXX) is None:
        raise TargetError(f"{CXX} is not installed; the arm target needs it to build run-model "
                          "(apt-get install g++-aarch64-linux-gnu, or run scripts/setup.sh)")
    fd, tmp = tempfile.mkstemp(prefix=".run-model-", dir=rt)
    os.close(fd)
    try:
        proc = subprocess.run([CXX, str(RUNNER_SOURCE), "-o", tmp] + _flags(rt),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise TargetError(f"building run-model with {CXX} failed: "
                              f"{proc.stderr.strip().splitlines()[-1][:400] if proc.stderr.strip() else ''}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return exe


def main() -> int:
    try:
        d = ensure_runtime()
        exe = runner_program() if shutil.which(CXX) else None
    except TargetError as e:
        print(f"edlc: error: {e}", file=sys.stderr)
        return 2
    print(f"aarch64 TVM runtime in {d}" + (f"; runner {exe.name}" if exe else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
