"""Just enough ELF32 (little-endian, as ARM objects are) to size code: section sizes of an
object and symbol sizes and addresses, without binutils. memory.json and the instruction-count
markers read these."""

from __future__ import annotations

import struct


def _sections(data: bytes) -> list[tuple[str, int, int, int, int, int]]:
    """(name, type, offset, size, link, entsize) of each section."""
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise ValueError("not a little-endian ELF32 file")
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
    raw = []
    for i in range(shnum):
        (name, typ, _flags, _addr, offset, size, link, _info, _align,
         entsize) = struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize)
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
    secs = _sections(data)
    out: dict[str, tuple[int, int]] = {}
    for _name, typ, offset, size, link, entsize in secs:
        if typ != 2:  # SYMTAB
            continue
        strtab = secs[link][2]
        for i in range(size // (entsize or 16)):
            st_name, value, st_size, _info, _other, _shndx = struct.unpack_from(
                "<IIIBBH", data, offset + i * (entsize or 16))
            if st_name:
                out[_cstr(data, strtab + st_name)] = (value, st_size)
    return out


def symbol_sizes(data: bytes) -> dict[str, int]:
    return {n: s for n, (_v, s) in symbols(data).items()}
