"""CUDA: NVIDIA GPUs (sm_80 A100, sm_86 A10/RTX 30, sm_89 L4/RTX 40, sm_90 H100/H200).

Kernels are scheduled by TVM's dlight rules (edlc/schedules/gpu.py), TVM writes them as CUDA
C++, and nvcc compiles that source to a cubin for the chosen `arch`. The artifact is:

    OUT/
      manifest.json  params.npz   as for every target
      model.so        host code (Relax VM glue, kernel launches) with the cubin embedded
      kernels.<arch>.cubin        the same cubin, for inspection (cuobjdump, nvdisasm)
      kernels.cu                  the CUDA source nvcc compiled

Building needs nvcc but no GPU. TVM 0.27 keeps CUDA *source* in the built module when no GPU
runtime is loaded (and would JIT-compile it with NVRTC at load time); edlc instead stores the
cubin in model.so (`embed_cubin`), so a GPU machine loads it with TVM's runtime alone, without
nvcc or NVRTC. Where a GPU is present at build time, TVM compiles the kernels while building
through `tvm_callback_cuda_compile`; edlc points that callback at nvcc for the same `arch`.
`Module.run` runs the model in this process on GPU 0, or raises a TargetError without one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from edlc.errors import LoweringError, TargetError
from edlc.target import Target, register_target

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
DEFAULT_ARCH = "sm_80"
SOURCE = "kernels.cu"
# what TVM's own tags (tvm/backend/cuda/target_tags.py) give every data-center GPU
LIMITS = {"max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
          "thread_warp_size": 32, "registers_per_block": 65536}
EM_CUDA = 190  # e_machine of a cubin (an ELF file)


@functools.cache
def local_gpu_arch() -> str | None:
    """The first local GPU's architecture (`sm_90` for compute capability 9.0), from
    nvidia-smi; None when there is no GPU (or no driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or not lines or "." not in lines[0]:
        return None
    major, minor = lines[0].split(".", 1)
    return f"sm_{major}{minor}" if major.isdigit() and minor.isdigit() else None


def _default_arch() -> str:
    local = local_gpu_arch()
    if local is None:
        return DEFAULT_ARCH
    if local not in ARCHS:
        raise TargetError(f"this machine's GPU is {local}, which target 'cuda' does not build "
                          f"for; give --arch ({', '.join(ARCHS)}) to build for another GPU")
    return local


@register_target("cuda", "NVIDIA GPU (--arch sm_80|sm_86|sm_89|sm_90; default: the local GPU, "
                         "else sm_80); builds with nvcc, runs on a local GPU")
def cuda(arch: str | None = None) -> Target:
    arch = arch or _default_arch()
    if arch not in ARCHS:
        raise TargetError(f"target 'cuda' does not take --arch {arch}; it takes {', '.join(ARCHS)}")
    return Target("cuda", {"kind": "cuda", "arch": arch, **LIMITS}, host={"kind": "llvm"},
                  description=f"NVIDIA GPU ({arch}), kernels compiled by nvcc")


# ---- building ------------------------------------------------------------------------------------
def cubin_name(arch: str) -> str:
    """The cubin's file name in the artifact."""
    return f"kernels.{arch}.cubin"


def find_nvcc() -> str:
    """nvcc from PATH, else from the usual CUDA install folders."""
    found = shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if found is None and home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            found = os.path.join(home, "bin", "nvcc")
    if found is None:
        raise TargetError("target 'cuda' compiles its kernels with nvcc, which is not on PATH "
                          "(install the CUDA toolkit, or set CUDA_HOME)")
    return found


@functools.lru_cache(maxsize=8)
def _compile(source_sha: str, arch: str, source: str) -> bytes:
    nvcc = find_nvcc()
    with tempfile.TemporaryDirectory(prefix="edlc-nvcc-") as tmp:
        src, out = os.path.join(tmp, SOURCE), os.path.join(tmp, "kernels.cubin")
        with open(src, "w") as f:
            f.write(source)
        # TVM's own nvcc flags for its generated code (tvm/support/nvcc.py), without fast math
        cmd = [nvcc, "--cubin", "-O3", f"-arch={arch}", "-w",
               "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "--expt-relaxed-constexpr", "-o", out, src]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
            first = (errors or proc.stderr.strip().splitlines() or ["no message"])[0]
            raise LoweringError(f"nvcc failed on the generated CUDA kernels for {arch}: "
                                f"{first.strip()[:400]}")
        with open(out, "rb") as f:
            return f.read()


def compile_cubin(source: str, arch: str) -> bytes:
    """nvcc's cubin of CUDA source for `arch` (cached: a GPU build compiles it while TVM builds
    and again for the artifact)."""
    return _compile(hashlib.sha256(source.encode()).hexdigest(), arch, source)


@contextlib.contextmanager
def nvcc_callback(arch: str) -> Iterator[None]:
    """Make TVM compile CUDA with nvcc for `arch` while building. TVM calls the callback only
    where its CUDA runtime is loaded (a GPU machine); its default (NVRTC) needs the
    cuda-bindings package and may not be installed. The previous callback is restored."""
    import tvm_ffi

    name = "tvm_callback_cuda_compile"
    before = tvm_ffi.get_global_func(name, allow_missing=True)
    tvm_ffi.register_global_func(name, lambda code, *_: compile_cubin(str(code), arch),
                                 override=True)
    try:
        yield
    finally:
        if before is not None:
            tvm_ffi.register_global_func(name, before, override=True)


def build(mod, target) -> tuple[Any, dict[str, bytes]]:
    """Build a scheduled Relax module for a CUDA TVM target: the executable and the files the
    artifact keeps beside model.so (the cubin and its source)."""
    import tvm

    arch = str(target.attrs["arch"])
    with nvcc_callback(arch):
        executable = tvm.compile(mod, target=target, relax_pipeline=None)
    source = kernel_source(executable)
    return executable, {cubin_name(arch): compile_cubin(source, arch), SOURCE: source.encode()}


def _modules(module, kind: str) -> list:
    """The modules of a kind in a TVM module's import tree."""
    found = [module] if module.kind == kind else []
    for m in module.imports:
        found += _modules(m, kind)
    return found


def kernel_source(executable) -> str:
    """The CUDA source TVM generated for a freshly built executable."""
    mods = _modules(executable.mod if hasattr(executable, "mod") else executable, "cuda")
    if len(mods) != 1:
        raise LoweringError(f"expected one CUDA module in the build, found {len(mods)}")
    source = mods[0].inspect_source("cuda")
    if not source:
        raise TargetError("this CUDA module holds no source (it was loaded from an artifact); "
                          "copy that artifact directory instead of exporting it again")
    return str(source)


# ---- the library: embed the cubin -----------------------------------------------------------------
def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _string(data: bytes) -> bytes:
    return _u64(len(data)) + data


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u64(self) -> int:
        (n,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return n

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TargetError("unexpected layout of TVM's packed module (truncated)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def string(self) -> bytes:
        return self.raw(self.u64())


def _with_cubin(entry: bytes, source: bytes, cubin: bytes) -> bytes:
    """A serialized CUDA module (<fmt> <function table> <code>, the layout of TVM's
    CUDAModuleNode::SaveToBytes) with its code replaced by the cubin, format "cubin"."""
    r = _Reader(entry)
    fmt = r.string()
    for code in (source, cubin):
        tail = _string(code)
        if entry.endswith(tail) and len(entry) - len(tail) >= r.pos:
            return _string(b"cubin") + entry[r.pos:len(entry) - len(tail)] + _string(cubin)
    raise TargetError(f"unexpected layout of TVM's CUDA module (format {fmt!r}): its code is "
                      "neither the generated source nor the cubin")


def unpack_imports(blob: bytes) -> tuple[bytes, list[tuple[bytes, bytes | None]]]:
    """TVM's packed import tree (ProcessLibraryBin's layout: <nbytes> <import tree> then per
    module <kind> [<bytes>]) as (the import tree, [(kind, bytes)]); "_lib", the place of
    model.so's own code, has no bytes."""
    r = _Reader(blob)
    r.u64()  # nbytes
    start = r.pos
    indptr = [r.u64() for _ in range(r.u64())]  # the import tree, as CSR: indptr ...
    r.raw(8 * r.u64())  # ... and child indices
    tree, modules = blob[start:r.pos], []
    for _ in range(len(indptr) - 1):
        kind = r.string()
        modules.append((kind, None if kind == b"_lib" else r.string()))
    return tree, modules


def pack_imports(tree: bytes, modules: list[tuple[bytes, bytes | None]]) -> bytes:
    """The inverse of `unpack_imports`."""
    body = tree + b"".join(_string(kind) + (b"" if data is None else _string(data))
                           for kind, data in modules)
    return _u64(len(body)) + body


def embed_cubin(cubin: bytes) -> Callable[..., str]:
    """An `fpack_imports` for `export_library` that packs the module tree as TVM does, but with
    the cubin in place of the CUDA source, as an object file linked into model.so."""

    def pack(module, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        import tvm_ffi

        host = _modules(module, "llvm")
        if not host:
            raise TargetError("the CUDA build has no host (llvm) module")
        blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(module).numpy())
        source = kernel_source(module).encode()
        tree, modules = unpack_imports(blob)
        blob = pack_imports(tree, [(kind, _with_cubin(data, source, cubin) if kind == b"cuda"
                                     else data) for kind, data in modules])
        target = host[0].get_function("_get_target_string")()
        obj = tvm_ffi.get_global_func("codegen.codegen_blob")(blob, is_system_lib, target, prefix)
        path = os.path.join(workspace_dir, f"{prefix}devc.o")
        obj.write_to_file(path)
        return path

    return pack


# ---- running -------------------------------------------------------------------------------------
def cubin_arch(data: bytes) -> str | None:
    """The architecture a cubin was compiled for (`sm_90`), None if `data` is not a cubin.
    e_flags holds the SM version: bits 8-15 from ELF ABI version 8 (CUDA 12.8+), else 0-7."""
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    if struct.unpack_from("<H", data, 18)[0] != EM_CUDA:
        return None
    flags = struct.unpack_from("<I", data, 48)[0]
    sm = (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF
    return f"sm_{sm}"


def gpu_present() -> bool:
    """A CUDA GPU that TVM's runtime can use (its CUDA runtime loads only with a driver)."""
    import tvm

    return bool(tvm.cuda(0).exist)


def device(arch: str):
    """GPU 0, for kernels built for `arch`; a TargetError when there is none, or when its
    compute capability cannot run them (a cubin runs on its own major version, same or newer
    minor)."""
    import tvm

    if not gpu_present():
        raise TargetError(f"no CUDA device is present on this machine: the model was built for "
                          f"an NVIDIA GPU ({arch}); run it where one is (copy the artifact "
                          "directory, then `edlc run OUT`)")
    dev = tvm.cuda(0)
    major, minor = (int(x) for x in str(dev.compute_version).split("."))
    want_major, want_minor = int(arch[3:-1]), int(arch[-1])
    if major != want_major or minor < want_minor:
        raise TargetError(f"the model was built for {arch}, and this GPU is sm_{major}{minor} "
                          f"(compute capability {major}.{minor}): compile it with --arch "
                          f"sm_{major}{minor}")
    return dev
