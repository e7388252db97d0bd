"""Just enough little-endian ELF (ELF32 for Cortex-M, ELF64 for aarch64) to size code: section
sizes of an object and symbol sizes and addresses, without binutils. memory.json and the
instruction-count markers read these."""

from __future__ import annotations

import struct

# per ELF class (1: 32-bit, 2: 64-bit): e_shoff format and offset, offset of e_shentsize,
# section header format, symbol format and where in it st_name, st_value and st_size are
_LAYOUT = {1: ("<I", 0x20, 0x2E, "<IIIIIIIIII", "<IIIBBH", (0, 1, 2)),
           2: ("<Q", 0x28, 0x3A, "<IIQQQQIIQQ", "<IBBHQQ", (0, 4, 5))}


def _layout(data: bytes) -> tuple:
    if data[:4] != b"\x7fELF" or data[4] not in _LAYOUT or data[5] != 1:
        raise ValueError("not a little-endian ELF file")
    return _LAYOUT[data[4]]


def _sections(data: bytes) -> list[tuple[str, int, int, int, int, int]]:
    """(name, type, offset, size, link, entsize) of each section."""
    off_fmt, off_at, ent_at, sh_fmt, _, _ = _layout(data)
    shoff, = struct.unpack_from(off_fmt, data, off_at)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, ent_at)
    raw = []
    for i in range(shnum):
        (name, typ, _flags, _addr, offset, size, link, _info, _align,
         entsize) = struct.unpack_from(sh_fmt, data, shoff + i * shentsize)
        raw.append((name, typ, offset, size, link, entsize))
    strtab_off = raw[shstrndx][2]
    return [(_cstr(data, strtab_off + n), t, o, s, lk, es) for n, t, o, s, lk, es in raw]


def _cstr(data: bytes, at: int) -> str:
    end = data.index(b"\0", at)
    return data[at:end].decode("ascii", "replace")


def section_sizes(data: bytes) -> dict[str, int]:
    """Section name -> bytes, for the sections that occupy memory (not symbols, debug info)."""
    sizes: dict[str, int] = {}
    for name, typ, _o, size, _l, _e in _sections(data):
        if typ in (1, 8, 0x70000001) and not name.startswith((".debug", ".comment", ".note")):
            sizes[name] = sizes.get(name, 0) + size  # PROGBITS, NOBITS, ARM_EXIDX
    return sizes


def symbols(data: bytes) -> dict[str, tuple[int, int]]:
    """Symbol name -> (value, size) of every named symbol (value has the thumb bit as stored)."""
    sym_fmt, (at_name, at_value, at_size) = _layout(data)[4:]
    width = struct.calcsize(sym_fmt)
    secs = _sections(data)
    out: dict[str, tuple[int, int]] = {}
    for _name, typ, offset, size, link, entsize in secs:
        if typ != 2:  # SYMTAB
            continue
        strtab = secs[link][2]
        for i in range(size // (entsize or width)):
            fields = struct.unpack_from(sym_fmt, data, offset + i * (entsize or width))
            st_name, value, st_size = fields[at_name], fields[at_value], fields[at_size]
            if st_name:
                out[_cstr(data, strtab + st_name)] = (value, st_size)
    return out


def symbol_sizes(data: bytes) -> dict[str, int]:
    return {n: s for n, (_v, s) in symbols(data).items()}
