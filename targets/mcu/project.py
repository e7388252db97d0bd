"""The firmware project: the AOT model library (C entry, weights, kernels), its header, a test
firmware around it, a Makefile for arm-none-eabi-gcc, a linker-script fragment, memory.json.

    OUT/
      manifest.json  memory.json  Makefile  edlc_sections.ld
      lib/edlc_<name>.h            the API: int edlc_<name>_run(const float* x, float* y)
      lib/edlc_<name>.c            the entry: kernel calls in order over one static arena
      lib/edlc_<name>_weights.c    the weights as const arrays (section .rodata.edlc.<name>)
      lib/edlc_<name>_kernels.o    the kernels (LLVM thumb object; .c for the `c` target)
      test/main.c startup.c harness.c harness.h fw.ld   the QEMU test firmware

`lib/` and `edlc_sections.ld` are what a vendor project needs. Nothing in `lib/` allocates,
prints or needs the TVM runtime.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import edlc
from edlc.lower.aot import AotProgram, AotTensor, c_identifier
from edlc.memory_plan import ALIGN, Buffer, Plan, align_up, plan
from edlc.targets.mcu.elf import section_sizes, symbol_sizes

TEMPLATES = Path(__file__).with_name("templates")
STACK_SIZE = 16384  # the test firmware's stack
# DLPack type codes
_DL_CODE = {"i": 0, "u": 1, "f": 2, "b": 1}
_C_TYPE = {"float32": "float", "float64": "double", "int8": "int8_t", "int16": "int16_t",
           "int32": "int32_t", "int64": "int64_t", "uint8": "uint8_t", "uint16": "uint16_t",
           "uint32": "uint32_t", "uint64": "uint64_t", "bool": "uint8_t", "float16": "uint16_t",
           "bfloat16": "uint16_t"}


@dataclass
class Layout:
    """Where every tensor's bytes live: the arena plan plus the workspace of each call."""

    plan: Plan
    buffers: list[Buffer]
    workspace_offsets: dict[int, int]  # call index -> arena offset of its workspace


def plan_memory(program: AotProgram) -> Layout:
    """Liveness of every arena tensor (producer call .. last reader) and every kernel workspace
    (its call only), packed into one arena."""
    users = program.storage_users()
    buffers = []
    for name, t in program.tensors.items():
        if t.base or t.role != "intermediate" or not t.nbytes:
            continue
        steps = users.get(name, [])
        if steps:
            buffers.append(Buffer(name, t.nbytes, min(steps), max(steps)))
    for i, c in enumerate(program.calls):
        if c.workspace:
            buffers.append(Buffer(f"workspace{i}", c.workspace, i, i))
    p = plan(buffers)
    ws = {i: p.offsets[f"workspace{i}"] for i, c in enumerate(program.calls) if c.workspace}
    return Layout(p, buffers, ws)


def _cname(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        s = c_identifier(n).lower()
        while s in out:
            s += "_"
        out.append(s)
    return out


_WORD = {1: ("uint8_t", np.uint8, "0x%02x"), 2: ("uint16_t", np.uint16, "0x%04x"),
         4: ("uint32_t", np.uint32, "0x%08xu"), 8: ("uint64_t", np.uint64, "0x%016xull")}


def c_array(data: np.ndarray) -> tuple[str, str]:
    """(C element type, initializer) holding `data` bit-exactly as little-endian words: the
    kernels see only bytes, and hex words compile several times faster than float literals."""
    flat = np.ascontiguousarray(data).reshape(-1)
    ctype, word, fmt = _WORD[flat.dtype.itemsize]
    items = [fmt % v for v in flat.view(word).tolist()]
    lines = [", ".join(items[i:i + 12]) for i in range(0, len(items), 12)]
    return ctype, "{\n  " + ",\n  ".join(lines) + "\n}"


class ProjectWriter:
    """Generates the files of a firmware project from an AOT program and a target."""

    def __init__(self, program: AotProgram, target, model_name: str,
                 input_names: list[str], output_names: list[str]):
        self.p = program
        self.target = target
        self.model = model_name
        self.name = program.name
        self.NAME = self.name.upper()
        self.layout = plan_memory(program)
        self.in_params = _cname(input_names)
        self.out_params = _cname(output_names)
        # C names of the tensors' descriptors and weights
        self.index = {n: i for i, n in enumerate(program.tensors)}
        self._weights_source: str | None = None

    # -- the library ---------------------------------------------------------------------------
    @property
    def cc(self) -> str:
        """The C compiler the project builds with (and memory_report sizes the entry with)."""
        return "arm-none-eabi-gcc"

    @property
    def cflags(self) -> list[str]:
        return list(self.target.mcu["cflags"])

    def c_type(self, t: AotTensor) -> str:
        return _C_TYPE.get(t.dtype, "uint8_t")

    def signature(self) -> str:
        ins = [f"const {self.c_type(self.p.tensors[n])}* {p}"
               for n, p in zip(self.p.inputs, self.in_params)]
        outs = [f"{self.c_type(self.p.tensors[n])}* {p}"
                for n, p in zip(self.p.outputs, self.out_params)]
        return f"int edlc_{self.name}_run({', '.join(ins + outs)})"

    def header(self) -> str:
        def spec(n: str, p: str) -> str:
            t = self.p.tensors[n]
            return f" *   {p}: {t.dtype}[{', '.join(map(str, t.shape))}]"

        io = [spec(n, p) for n, p in zip(self.p.inputs, self.in_params)]
        oo = [spec(n, p) for n, p in zip(self.p.outputs, self.out_params)]
        sizes = [f"#define EDLC_{self.NAME}_{p.upper()}_SIZE {int(np.prod(self.p.tensors[n].shape))}u"
                 f"  /* elements */"
                 for n, p in list(zip(self.p.inputs, self.in_params)) + list(zip(self.p.outputs, self.out_params))]
        guard = f"EDLC_{self.NAME}_H"
        return "\n".join([
            f"/* edlc_{self.name}.h: model '{self.model}' compiled by edlc {edlc.__version__} for "
            f"{self.target.name} (ahead of time: no TVM runtime, no heap, no stdio).",
            " *",
            f" *   {self.signature()};",
            " *",
            " * inputs (read only):",
            *io,
            " * outputs (written):",
            *oo,
            " * Returns 0, or the 1-based index of the kernel call that failed.",
            f" * Not reentrant: every call uses one static arena of EDLC_{self.NAME}_ARENA_SIZE bytes",
            f" * (section .bss.edlc.{self.name}, never needs zeroing); the weights, EDLC_{self.NAME}_WEIGHTS_SIZE",
            f" * bytes, are const arrays in section .rodata.edlc.{self.name} (place both with edlc_sections.ld).",
            " */",
            f"#ifndef {guard}",
            f"#define {guard}",
            "#include <stdint.h>",
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            f"#define EDLC_{self.NAME}_ARENA_SIZE {self.layout.plan.size}u",
            f"#define EDLC_{self.NAME}_WEIGHTS_SIZE {self.weights_bytes()}u",
            *sizes,
            f"{self.signature()};",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            f"#endif  /* {guard} */",
            "",
        ])

    def constants(self) -> list[AotTensor]:
        return [t for t in self.p.tensors.values() if t.role == "constant" and not t.base and t.nbytes]

    def weights_bytes(self) -> int:
        return sum(align_up(t.nbytes) for t in self.constants())

    def weight_symbol(self, t: AotTensor) -> str:
        return f"edlc_{self.name}_{t.name}"

    def weight_type(self, t: AotTensor) -> str:
        return _WORD[np.dtype(t.data.dtype).itemsize][0]

    def weights_source(self) -> str:
        if self._weights_source is None:
            out = [f"/* Weights of model '{self.model}' (edlc {edlc.__version__}): const, in flash, as",
                   " * little-endian words of the tensors' bytes. */", "#include <stdint.h>", ""]
            for t in self.constants():
                ctype, body = c_array(t.data)
                out.append(f"const {ctype} {self.weight_symbol(t)}[{t.data.size}] "
                           f"__attribute__((aligned({ALIGN}), section(\".rodata.edlc.{self.name}\"))) = "
                           f"{body};")
            self._weights_source = "\n".join(out) + "\n"
        return self._weights_source

    def _data_expr(self, t: AotTensor) -> str:
        base = self.p.tensors[t.storage]
        if base.role == "constant":
            return f"(void*){self.weight_symbol(base)}"
        if base.role == "intermediate":
            return f"arena + {self.layout.plan.offsets[base.name]}"
        return "0"  # input / output: set by the entry

    def entry_source(self) -> str:
        p, name = self.p, self.name
        used = {a for c in p.calls for a in c.args}
        c_kernels = p.kernel_format == "c"
        lines = [
            f"/* Entry of model '{self.model}' (edlc {edlc.__version__}, target {self.target.name}):",
            " * the kernels in order, each over tensors at fixed offsets of one static arena. */",
            "#include <stddef.h>",
            "#include <stdint.h>",
            f'#include "edlc_{name}.h"',
            "",
            "/* DLPack's DLTensor and tvm-ffi's TVMFFIAny, as the kernels read them */",
            "typedef struct { int32_t device_type, device_id; } edlc_device;",
            "typedef struct { uint8_t code, bits; uint16_t lanes; } edlc_dtype;",
            "typedef struct { void* data; edlc_device device; int32_t ndim; edlc_dtype dtype;",
            "                 int64_t* shape; int64_t* strides; uint64_t byte_offset; } edlc_tensor;",
            "typedef struct { int32_t type_index; uint32_t zero_padding;",
            "                 union { int64_t v_int64; const void* v_ptr; } v; } edlc_any;",
            "typedef int32_t (*edlc_kernel)(void*, const edlc_any*, int32_t, void*);",
            "#define EDLC_DLTENSOR_PTR 7",
            "",
        ]
        for k in dict.fromkeys(c.kernel for c in p.calls):
            lines.append(f"int32_t __tvm_ffi_{k}(void*, const edlc_any*, int32_t, void*);")
        for t in self.constants():
            lines.append(f"extern const {self.weight_type(t)} {self.weight_symbol(t)}[];")
        lines += ["",
                  f"static uint8_t arena[{max(self.layout.plan.size, ALIGN)}] "
                  f"__attribute__((aligned({ALIGN}), section(\".bss.edlc.{name}\")));", ""]
        for n in p.tensors:
            t = p.tensors[n]
            if n not in used:
                continue
            dims = ", ".join(map(str, t.shape))
            shape = f"(int64_t*)shape_{self.index[n]}" if t.shape else "NULL"
            if t.shape:
                lines.append(f"static const int64_t shape_{self.index[n]}[{len(t.shape)}] = {{{dims}}};")
            dt = np.dtype(t.dtype) if t.dtype != "bfloat16" else None
            code = 4 if dt is None else _DL_CODE[dt.kind]
            bits = 16 if dt is None else (8 if t.dtype == "bool" else dt.itemsize * 8)
            const = "" if t.role in ("input", "output") else "const "
            lines.append(f"static {const}edlc_tensor T{self.index[n]} = {{{self._data_expr(t)}, "
                         f"{{1, 0}}, {len(t.shape)}, {{{code}, {bits}, 1}}, {shape}, NULL, 0}};")
        lines.append("")
        for i, c in enumerate(p.calls):
            args = ", ".join(f"{{EDLC_DLTENSOR_PTR, 0, {{.v_ptr = &T{self.index[a]}}}}}" for a in c.args)
            lines.append(f"static const edlc_any args_{i}[{len(c.args)}] = {{{args}}};")
        lines += self._workspace_hooks(c_kernels)
        if not c_kernels and not self.target.features.get("fpu", True):
            lines.append((TEMPLATES / "softfp.c.in").read_text())
        if self.target.mcu is not None:
            lines += ["", "/* the LLVM kernels' unwind tables name it; nothing here unwinds */",
                      "__attribute__((weak)) void __aeabi_unwind_cpp_pr0(void) {}"]
        lines += ["", f"{self.signature()} {{"]
        if any(c.workspace for c in p.calls) and not c_kernels:
            lines += ["  __TVMBackendAllocWorkspace = workspace_alloc;",
                      "  __TVMBackendFreeWorkspace = workspace_free;"]
        for n, param in list(zip(p.inputs, self.in_params)) + list(zip(p.outputs, self.out_params)):
            for view, t in p.tensors.items():
                if t.storage == n and view in used:
                    lines.append(f"  T{self.index[view]}.data = (void*){param};")
        for i, c in enumerate(p.calls):
            ws = self.layout.workspace_offsets.get(i)
            region = f"arena + {ws}, {c.workspace}" if ws is not None else "NULL, 0"
            lines.append(f"  if (call(__tvm_ffi_{c.kernel}, args_{i}, {len(c.args)}, {region})) "
                         f"return {i + 1};")
        lines += ["  return 0;", "}", ""]
        return "\n".join(lines)

    def _workspace_hooks(self, c_kernels: bool) -> list[str]:
        """Kernel workspaces come from the call's planned slice of the arena, LIFO."""
        hooks = [
            "",
            "static uint8_t* workspace_next;",
            "static uint8_t* workspace_end;",
            "",
            "static __attribute__((unused)) void* workspace_alloc(int device_type, int device_id, uint64_t nbytes, "
            "int code, int bits) {",
            "  uint8_t* p = workspace_next;",
            f"  uint64_t size = (nbytes + {ALIGN - 1}u) & ~(uint64_t){ALIGN - 1}u;",
            "  (void)device_type; (void)device_id; (void)code; (void)bits;",
            "  if (p == NULL || size > (uint64_t)(workspace_end - p)) return NULL;",
            "  workspace_next = p + size;",
            "  return p;",
            "}",
            "",
            "static __attribute__((unused)) int workspace_free(int device_type, int device_id, void* ptr) {",
            "  (void)device_type; (void)device_id;",
            "  workspace_next = (uint8_t*)ptr;",
            "  return 0;",
            "}",
            "",
        ]
        if c_kernels:
            hooks += [
                "void* TVMBackendAllocWorkspace(int t, int d, uint64_t n, int c, int b) {",
                "  return workspace_alloc(t, d, n, c, b);",
                "}",
                "int TVMBackendFreeWorkspace(int t, int d, void* p) { return workspace_free(t, d, p); }",
            ]
        elif any(c.workspace for c in self.p.calls):
            hooks += [
                "extern void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);",
                "extern int (*__TVMBackendFreeWorkspace)(int, int, void*);",
            ]
        hooks += [
            "",
            "static int32_t call(edlc_kernel kernel, const edlc_any* args, int32_t n, "
            "uint8_t* workspace, uint32_t size) {",
            "  workspace_next = workspace;",
            "  workspace_end = workspace + size;",
            "  return kernel(NULL, args, n, NULL);",
            "}",
        ]
        return hooks

    # -- the test firmware ---------------------------------------------------------------------
    def test_main(self) -> str:
        p = self.p
        lines = [f"/* Test program for model '{self.model}': inputs from input<i>.bin, outputs to",
                 " * output<i>.bin (harness.c: semihosting or stdio), one inference between the",
                 " * two markers. */",
                 f'#include "edlc_{self.name}.h"', '#include "harness.h"', ""]
        args = []
        for kind, names in (("input", p.inputs), ("output", p.outputs)):
            for i, n in enumerate(names):
                t = p.tensors[n]
                lines.append(f"static {self.c_type(t)} {kind}_{i}[{max(int(np.prod(t.shape)), 1)}] "
                             f"__attribute__((aligned({ALIGN})));")
                args.append(f"{kind}_{i}")
        lines += ["", "int main(void) {"]
        for i in range(len(p.inputs)):
            lines.append(f'  if (edlc_read_file("input{i}.bin", input_{i}, sizeof input_{i})) {{ '
                         f'edlc_puts("edlc: cannot read input{i}.bin\\n"); return 2; }}')
        lines += ["  edlc_stack_paint();",
                  "  edlc_mark_begin();",
                  f"  int rc = edlc_{self.name}_run({', '.join(args)});",
                  "  edlc_mark_end();",
                  "  uint32_t stack = edlc_stack_used();"]
        for i in range(len(p.outputs)):
            lines.append(f'  if (edlc_write_file("output{i}.bin", output_{i}, sizeof output_{i})) '
                         "return 2;")
        lines += ['  edlc_puts("edlc: ");', '  edlc_put_u32("rc", (uint32_t)rc);',
                  '  edlc_put_u32("stack", stack);', '  edlc_puts("\\n");', "  return rc;", "}", ""]
        return "\n".join(lines)

    def linker_script(self) -> str:
        m = self.target.mcu
        text = (TEMPLATES / "fw.ld.in").read_text()
        subs = {"BOARD": m["board"], "MACHINE": m["machine"], "FLASH_ORIGIN": hex(m["flash"][0]),
                "FLASH_LENGTH": hex(m["flash"][1]), "RAM_ORIGIN": hex(m["ram"][0]),
                "RAM_LENGTH": hex(m["ram"][1]), "STACK_SIZE": str(STACK_SIZE)}
        return fill_template(text, subs)

    def makefile(self) -> str:
        kernels = (f"build/edlc_{self.name}_kernels.o" if self.p.kernel_format == "c"
                   else f"lib/edlc_{self.name}_kernels.o")
        return fill_template((TEMPLATES / "Makefile.in").read_text(), {
            "MODEL": self.model, "VERSION": edlc.__version__, "TARGET": self.target.name,
            "NAME": self.name, "CPUFLAGS": " ".join(self.cflags),
            "KERNELS": kernels, "MACHINE": self.target.mcu["machine"]})

    # -- everything ----------------------------------------------------------------------------
    def weights_files(self) -> dict[str, str | bytes]:
        """Path in the project -> contents of the files that hold the weights."""
        return {f"lib/edlc_{self.name}_weights.c": self.weights_source()}

    def _write_lib(self, out: Path, weights: bool = True) -> list[str]:
        """The library: header, entry, weights, kernels (and TVM header stubs for C kernels)."""
        lib = out / "lib"
        lib.mkdir(parents=True)
        files: dict[str, str | bytes] = {f"lib/edlc_{self.name}.h": self.header(),
                                         f"lib/edlc_{self.name}.c": self.entry_source()}
        if weights:
            files.update(self.weights_files())
        for path, data in files.items():
            if isinstance(data, bytes):
                (out / path).write_bytes(data)
            else:
                (out / path).write_text(data)
        written = list(files)
        if self.p.kernel_format == "c":
            (lib / f"edlc_{self.name}_kernels.c").write_text(self.p.kernels)
            written.append(f"lib/edlc_{self.name}_kernels.c")
            for h in ("ffi/c_api.h", "ffi/extra/c_env_api.h", "runtime/base.h",
                      "runtime/c_backend_api.h"):
                path = lib / "include" / "tvm" / h
                path.parent.mkdir(parents=True, exist_ok=True)
                if h == "ffi/c_api.h":
                    shutil.copyfile(TEMPLATES / "tvm_stub" / "c_api.h", path)
                else:
                    path.write_text('#include "tvm/ffi/c_api.h"\n')
                written.append(f"lib/include/tvm/{h}")
        else:
            (lib / f"edlc_{self.name}_kernels.o").write_bytes(self.p.kernels)
            written.append(f"lib/edlc_{self.name}_kernels.o")
        return written

    def write(self, out: Path, report: dict[str, Any] | None = None) -> list[str]:
        """Write the project into `out` (an empty directory); returns the files written."""
        written = self._write_lib(out)
        test = out / "test"
        test.mkdir()
        (test / "main.c").write_text(self.test_main())
        (test / "fw.ld").write_text(self.linker_script())
        (out / "Makefile").write_text(self.makefile())
        for f in ("startup.c", "harness.c", "harness.h"):
            shutil.copyfile(TEMPLATES / f, test / f)
        shutil.copyfile(TEMPLATES / "edlc_sections.ld", out / "edlc_sections.ld")
        written += ["test/main.c", "test/fw.ld", "Makefile", "edlc_sections.ld"]
        written += [f"test/{f}" for f in ("startup.c", "harness.c", "harness.h")]
        report = report if report is not None else self.memory_report()
        (out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
        return written + ["memory.json"]

    def memory_report(self) -> dict[str, Any]:
        """Flash (kernels, weights, entry) and RAM (arena, stack estimate), per-kernel code.
        The entry (and C kernels) are compiled with the project's compiler to size them; without
        it their sizes are null."""
        with tempfile.TemporaryDirectory(prefix="edlc-fw-") as tmp:
            self._write_lib(Path(tmp), weights=False)  # sized as data, not compiled
            lib = Path(tmp) / "lib"
            per_kernel, kernels_code, kernel_stack = self._kernel_sizes(lib)
            entry = _compiled_size(self.cc, lib / f"edlc_{self.name}.c", self.cflags, [lib])
        weights = self.weights_bytes()
        flash = kernels_code + weights + (entry["flash"] if entry else 0)
        arena = self.layout.plan
        stack = kernel_stack + 64  # entry frame and the libc helpers the kernels call
        return {
            "model": self.model,
            "target": self.target.name,
            "flash": {"total": flash, "kernels": kernels_code, "weights": weights,
                      "entry": entry["flash"] if entry else None},
            "ram": {"total": arena.size + stack + (entry["ram"] if entry else 0),
                    "arena": arena.size, "stack_estimate": stack,
                    "entry": entry["ram"] if entry else None},
            "arena": {"size": arena.size, "lower_bound": arena.lower_bound,
                      "overhead": round(arena.overhead, 4), "algorithm": arena.algorithm,
                      "tried": arena.tried, "alignment": ALIGN,
                      "buffers": [{"name": b.name, "offset": arena.offsets[b.name], "size": b.size,
                                   "first_call": b.start, "last_call": b.end}
                                  for b in sorted(self.layout.buffers, key=lambda b: b.start)]},
            "kernels": per_kernel,
            "calls": [{"kernel": c.kernel, "workspace": c.workspace} for c in self.p.calls],
        }

    def _kernel_sizes(self, lib: Path) -> tuple[dict[str, int | None], int, int]:
        """Per-kernel code bytes, all kernel code, and the deepest kernel's stack frames."""
        kernels = list(dict.fromkeys(c.kernel for c in self.p.calls))
        if self.p.kernel_format == "c":
            obj = _compile_object(self.cc, lib / f"edlc_{self.name}_kernels.c", self.cflags,
                                  [lib / "include"])
            if obj is None:
                return {k: None for k in kernels}, 0, 0
            data = obj
        else:
            data = self.p.kernels
        sizes = symbol_sizes(data)
        code = sum(s for n, s in section_sizes(data).items()  # TVM's fp16 helpers: gc'ed
                   if n.startswith((".text", ".rodata", ".ARM.exidx")) and "fp16" not in n)
        per = {k: sizes.get(f"__tvm_ffi_{k}", 0) + sizes.get(f"{k}_compute_", 0) for k in kernels}
        frames = _frame_sizes(self.p.kernel_asm)
        stack = max((frames.get(f"__tvm_ffi_{k}", 0) + frames.get(f"{k}_compute_", 0)
                     for k in kernels), default=0)
        return per, code, stack


def _frame_sizes(asm: str) -> dict[str, int]:
    """Stack bytes of each function in LLVM assembly: its largest CFA offset."""
    frames: dict[str, int] = {}
    current = None
    for line in asm.splitlines():
        m = re.match(r"^([A-Za-z_.$][\w.$]*):", line)
        if m and not m.group(1).startswith(".L"):
            current = m.group(1)
            frames.setdefault(current, 0)
            continue
        m = re.match(r"\s*\.cfi_def_cfa_offset\s+(\d+)", line)
        if m and current:
            frames[current] = max(frames[current], int(m.group(1)))
    return frames


def fill_template(text: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        text = text.replace(f"@{k}@", v)
    return text


def _compile_object(compiler: str, source: Path, cflags: list[str],
                    includes: list[Path]) -> bytes | None:
    """Compile one C file as the Makefile does; None without the compiler."""
    cc = shutil.which(compiler)
    if cc is None:
        return None
    with tempfile.TemporaryDirectory(prefix="edlc-size-") as tmp:
        obj = Path(tmp) / "x.o"
        cmd = [cc, *cflags, "-O2", "-std=c99", "-ffunction-sections", "-fdata-sections",
               *[f"-I{i}" for i in includes], "-c", str(source), "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            from edlc.errors import LoweringError

            raise LoweringError(f"{compiler} cannot compile {source.name}: "
                                f"{proc.stderr.strip()[-400:]}")
        return obj.read_bytes()


def _compiled_size(compiler: str, source: Path, cflags: list[str],
                   includes: list[Path]) -> dict[str, int] | None:
    obj = _compile_object(compiler, source, cflags, includes)
    if obj is None:
        return None
    flash = ram = 0
    for name, size in section_sizes(obj).items():
        if name.startswith((".text", ".rodata")):
            flash += size
        elif name.startswith((".data", ".bss")) and ".edlc." not in name:
            ram += size
            if name.startswith(".data"):
                flash += size
    return {"flash": flash, "ram": ram}
