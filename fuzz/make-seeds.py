#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ (seed-* files).

The binary targets' seeds come from fuzz/seed/main.go built with the Go toolchains given
(default: `go` on PATH): its real .go.buildinfo, its DWARF (the main package's unit only),
the type descriptors of its struct T, and small .gopclntab tables of its real function names
and entries in each layout gotel reads; `binary` gets small ELF files made of those sections
(with .symtab and DWARF, and stripped). Whole Go executables are over a megabyte: these keep
the corpora to a few kilobytes an input. The formats of the pieces are goinfo::fuzzing's.

    fuzz/make-seeds.py [GO ...]
"""

import os
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
BUILDINFO_MEMORY = 0x40_0000  # goinfo::fuzzing::BUILDINFO_MEMORY
SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHF_COMPRESSED = 0x2, 0x4, 0x1, 0x800


def parts(*pieces):
    """goinfo::fuzzing::parts' format: each piece but the last prefixed by its u32 length."""
    out = b""
    for p in pieces[:-1]:
        out += struct.pack("<I", len(p)) + p
    return out + pieces[-1]


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, "seed-" + name), "wb") as f:
        f.write(data)


class Elf:
    """The sections and symbols of a little-endian ELF64 file."""

    def __init__(self, data):
        self.data = data
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names = raw[shstrndx]
        self.sections = {}
        for (name, typ, flags, addr, off, size, link, info, align, entsize) in raw:
            end = data.index(b"\0", names[4] + name)
            self.sections[data[names[4] + name:end].decode()] = (typ, flags, addr, off, size)

    def section(self, name):
        typ, flags, addr, off, size = self.sections[name]
        body = self.data[off:off + size]
        if flags & SHF_COMPRESSED:
            body = zlib.decompress(body[24:])
        return addr, body

    def functions(self):
        """(name, address, size) of every function in .symtab, by address."""
        _, symtab = self.section(".symtab")
        _, strtab = self.section(".strtab")
        out = []
        for at in range(0, len(symtab), 24):
            name, info, _, _, value, size = struct.unpack_from("<IBBHQQ", symtab, at)
            if info & 0xF == 2:  # STT_FUNC
                out.append((strtab[name:strtab.index(b"\0", name)], value, size))
        return sorted(out, key=lambda f: f[1])


def pclntab(magic, functions, text_start, stored_text_start):
    """A .gopclntab of `functions` ((name, entry)) and an end, in the layout of `magic`."""
    absolute = magic == 0xFFFFFFFA  # Go 1.16-1.17: entries are addresses, words are uintptrs
    header = bytearray(8 + 8 * 8)
    struct.pack_into("<IBBBB", header, 0, magic, 0, 0, 1, 8)
    names, name_offs = b"", []
    for name, _ in functions:
        name_offs.append(len(names))
        names += name + b"\0"
    funcnames = len(header)
    pcln = funcnames + len(names)
    entries = [e for _, e in functions]
    end = entries[-1] + 0x40
    table, records = b"", b""
    entry_size = 16 if absolute else 8
    funcs_at = (len(functions) + 1) * entry_size
    for i, entry in enumerate(entries + [end]):
        func_off = funcs_at + len(records) if i < len(functions) else 0
        if absolute:
            table += struct.pack("<QQ", entry, func_off)
        else:
            table += struct.pack("<II", entry - text_start, func_off)
        if i < len(functions):
            if absolute:
                records += struct.pack("<QI4x", entry, name_offs[i])
            else:
                records += struct.pack("<II", entry - text_start, name_offs[i])
    words = [len(functions), 1]
    if absolute:
        words += [funcnames, 0, 0, 0, pcln]
    else:
        words += [stored_text_start, funcnames, 0, 0, 0, pcln]
    for i, w in enumerate(words):
        struct.pack_into("<Q", header, 8 + 8 * i, w)
    return bytes(header) + names + table + records


def dwarf_unit(exe, info, wanted):
    """One 32-bit DWARF unit holding the struct DIEs (members included) named `wanted`, cut
    from the type unit of `exe`'s .debug_info (`info`, uncompressed), where readelf says they
    lie. Their members' type references point into the rest, which is left out: the struct
    layouts read names and offsets alone."""
    dump = subprocess.run(["readelf", "--debug-dump=info", exe], capture_output=True,
                          text=True).stdout.splitlines()
    dies = []  # (depth, offset, line number) of every DIE
    for i, line in enumerate(dump):
        line = line.strip()
        if line.startswith("<") and "Abbrev Number" in line:
            depth, offset = line[1:].split(">")[0], line.split("><")[1].split(">")[0]
            dies.append((int(depth), int(offset, 16), i))
    pieces, unit_at = [], None
    for n, (depth, offset, line) in enumerate(dies):
        name = dump[line + 1].split(":", 1)[-1].strip()
        if "DW_TAG_structure_type" in dump[line] and name in wanted:
            end = next(o for d, o, _ in dies[n + 1:] if d <= depth)
            pieces.append(info[offset:end])
            unit_at = max(u for d, u, _ in dies[:n] if d == 0)
    # The unit's header and its own DIE, up to its first child.
    start = 0
    while start + 4 + struct.unpack_from("<I", info, start)[0] <= unit_at:
        start += 4 + struct.unpack_from("<I", info, start)[0]
    first_child = next(o for d, o, _ in dies if o > unit_at)
    body = info[start + 4:first_child] + b"".join(pieces) + b"\0"
    return struct.pack("<I", len(body)) + body


def types_image(rodata_addr, rodata):
    """T's struct descriptor (and *T's, where it has a package path), with their names, package paths and
    field table, copied from the type data into a small image, their offsets and pointers
    made to point at the copies: (type data address, image address, image)."""
    def name_at(addr):
        at = addr - rodata_addr
        if not 0 <= at < len(rodata) - 1:
            return None
        n, shift, i = 0, 0, at + 1
        while True:
            b = rodata[i]
            n |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                return rodata[at:i + n]
            shift += 7

    image = bytearray()
    start = rodata_addr  # the copies are the type data

    def put(data, align=8):
        image.extend(bytes(-len(image) % align))
        at = start + len(image)
        image.extend(data)
        return at

    descriptors = []
    for at in range(0, len(rodata) - 96, 8):
        tflag, kind = rodata[at + 20], rodata[at + 23] & 0x1F
        name_off, = struct.unpack_from("<i", rodata, at + 40)
        name = name_at(rodata_addr + name_off)
        if kind in (22, 25) and tflag & 1 and name and name.endswith(b"*main.T"):
            descriptors.append((at, kind))
    for at, kind in descriptors:
        size = 80 if kind == 25 else 56
        d = bytearray(rodata[at:at + size + 16])
        for field in (40, size):  # the name's and the package path's offsets from the base
            off, = struct.unpack_from("<i", d, field)
            struct.pack_into("<i", d, field, put(name_at(rodata_addr + off), 1) - rodata_addr)
        if kind == 25:
            fields, count = struct.unpack_from("<QQ", d, 56)
            table = bytearray(rodata[fields - rodata_addr:fields - rodata_addr + 24 * count])
            for i in range(count):
                name, = struct.unpack_from("<Q", table, 24 * i)
                struct.pack_into("<Q", table, 24 * i, put(name_at(name), 1))
            struct.pack_into("<Q", d, 56, put(table))
        put(d)
    assert descriptors, "no descriptor of main.T"
    return rodata_addr, start, bytes(image)


def elf(sections, symbols):
    """An x86-64 executable of `sections` ((name, flags, addr, data)) and function `symbols`
    ((name, address, size), in .text), one PT_LOAD per allocated section."""
    sections = list(sections)
    if symbols:
        text = [s[0] for s in sections].index(".text") + 1
        strtab, symtab = b"\0", bytes(24)
        for name, addr, size in symbols:
            symtab += struct.pack("<IBBHQQ", len(strtab), 0x12, 0, text, addr, size)
            strtab += name + b"\0"
        sections += [(".symtab", 0, 0, symtab), (".strtab", 0, 0, strtab)]
    shstrtab = b"\0" + b"".join(s[0].encode() + b"\0" for s in sections) + b".shstrtab\0"
    sections.append((".shstrtab", 0, 0, shstrtab))
    loads = sum(1 for s in sections if s[1] & SHF_ALLOC)
    out = bytearray(64 + 56 * loads)
    offsets = []
    for _, _, _, data in sections:
        out += bytes(-len(out) % 16)
        offsets.append(len(out))
        out += data
    out += bytes(-len(out) % 8)
    shoff = len(out)
    entry = sections[0][2]
    struct.pack_into("<4sBBBB8xHHIQQQIHHHHHH", out, 0, b"\x7fELF", 2, 1, 1, 0, 2, 62, 1, entry,
                     64, shoff, 0, 64, 56, loads, 64, len(sections) + 1, len(sections))
    ph = 64
    names = [s[0] for s in sections]
    out += bytes(64)
    name_at = 1
    for (name, flags, addr, data), off in zip(sections, offsets):
        if flags & SHF_ALLOC:
            pflags = 4 | (1 if flags & SHF_EXECINSTR else 0) | (2 if flags & SHF_WRITE else 0)
            struct.pack_into("<IIQQQQQQ", out, ph, 1, pflags, off, addr, addr, len(data),
                             len(data), 0x1000)
            ph += 56
        typ = {".symtab": 2, ".strtab": 3, ".shstrtab": 3}.get(name, 1)
        is_symtab = name == ".symtab"
        link = names.index(".strtab") + 1 if is_symtab else 0
        out += struct.pack("<IIQQQQIIQQ", name_at, typ, flags, addr, off, len(data), link,
                           int(is_symtab), 8, 24 if is_symtab else 0)
        name_at += len(name) + 1
    return bytes(out)


def compressed(data):
    return struct.pack("<IIQQ", 1, 0, len(data), 1) + zlib.compress(data, 9)


def seeds_of(go, tag):
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "seed")
        env = dict(os.environ, GOFLAGS="-trimpath", GOTOOLCHAIN="local", CGO_ENABLED="0")
        subprocess.run([go, "build", "-o", exe, "."], cwd=os.path.join(HERE, "seed"), env=env,
                       check=True)
        with open(exe, "rb") as f:
            binary = Elf(f.read())
        seeds_of_binary(exe, binary, tag)


def seeds_of_binary(exe, binary, tag):
    buildinfo_addr, buildinfo = binary.section(".go.buildinfo")
    write("buildinfo", tag, parts(buildinfo, b""))

    text_addr, text = binary.section(".text")
    functions = [f for f in binary.functions() if f[1] + f[2] <= text_addr + 0x1000][:12]
    entries = [(name, addr) for name, addr, _ in functions]
    for magic, layout in [(0xFFFFFFF1, "go1.20"), (0xFFFFFFF0, "go1.18"), (0xFFFFFFFA, "go1.16")]:
        table = pclntab(magic, entries, text_addr, 0 if magic == 0xFFFFFFF1 else text_addr)
        write("pclntab", f"{tag}-{layout}", struct.pack("<Q", text_addr) + table)
    pcln = pclntab(0xFFFFFFF1, entries, text_addr, 0)

    abbrev = binary.section(".debug_abbrev")[1]
    info = dwarf_unit(exe, binary.section(".debug_info")[1], {"main.T", "runtime.g"})
    strs = [binary.section(s)[1] if s in binary.sections else b""
            for s in (".debug_str", ".debug_line_str")]
    write("dwarf", tag, parts(abbrev, strs[0], strs[1], info))

    rodata_name = ".go.type" if ".go.type" in binary.sections else ".rodata"
    rodata_addr, rodata = binary.section(rodata_name)
    base, start, window = types_image(rodata_addr, rodata)
    for offset_embed in (0, 1):
        write("types", f"{tag}-{offset_embed}",
              bytes([offset_embed]) + struct.pack("<QQ", base, start) + window)

    code = text[:max(addr + size for _, addr, size in functions) - text_addr]
    alloc = [(".text", SHF_ALLOC | SHF_EXECINSTR, text_addr, code),
             (rodata_name, SHF_ALLOC, start, window),
             (".gopclntab", SHF_ALLOC, start + len(window) + 0x1000, pcln),
             (".go.buildinfo", SHF_ALLOC | SHF_WRITE, buildinfo_addr, buildinfo)]
    debug = [(".debug_abbrev", SHF_COMPRESSED, 0, compressed(abbrev)),
             (".debug_info", SHF_COMPRESSED, 0, compressed(info))]
    write("binary", f"{tag}-symtab-dwarf", elf(alloc + debug, functions))
    write("binary", f"{tag}-stripped", elf(alloc, []))


def synthetic():
    """Inputs no installed toolchain writes: the pre-1.18 buildinfo, whose header points to Go
    string headers in memory."""
    m = BUILDINFO_MEMORY
    version, modinfo = b"go1.17.13", b"path\texample.com/seed\nmod\texample.com/seed\t(devel)\t\n"
    memory = struct.pack("<QQQQ", m + 32, len(version), m + 48, len(modinfo))
    memory += version.ljust(16, b"\0") + modinfo
    section = b"\xff Go buildinf:" + bytes([8, 0]) + struct.pack("<QQ", m, m + 16)
    write("buildinfo", "go1.17-pointers", parts(section, memory))


def main():
    toolchains = sys.argv[1:] or ["go"]
    for go in toolchains:
        version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        seeds_of(go, version)
    synthetic()
    with open(os.path.join(HERE, "..", "deploy", "systemd", "gotel.yaml"), "rb") as f:
        write("config", "systemd", parts(f.read(), b"exe=/app/*,ports=8000-8999;name=api*",
                                         b"250ms", b"127.0.0.1:9464", b"/app/orders"))
    for name, value in [("w3c", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                        ("later-version", "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
                                          "-01-what-comes-next")]:
        write("traceparent", name, value.encode())
    # events: the first byte picks an instrumentation's event (see fuzz_targets/events.rs).
    for kind in range(16):
        write("events", f"kind{kind}", bytes([kind]))
    write("events", "raw-short", b"\x80\x01\x00\x00\x00\x2a\x00\x00\x00")


if __name__ == "__main__":
    main()
