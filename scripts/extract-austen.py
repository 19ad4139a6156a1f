#!/usr/bin/env python3
"""Write Jane Austen's six novels as one UTF-8 text file.

Reads the lazy-load data base of the R package janeaustenr (as unpacked from the
Debian package r-cran-janeaustenr with `dpkg-deb -x`):

  data/Rdata.rdx  gzip-compressed R serialization of list(variables=, references=,
                  compressed=); `variables` maps each object name to c(offset, length)
                  inside Rdata.rdb.
  data/Rdata.rdb  concatenated entries; each one is a 4-byte big-endian length of the
                  uncompressed data followed by a zlib stream (compression type 1; types
                  2 and 3 put a one-byte tag 'Z' / 'X' after the length: bzip2 / xz).

Each entry is an R serialization stream in XDR format ('X\\n', version 2 or 3). The
reader below covers the object types a data package holds: vectors of all atomic
kinds, lists, pairlists with attributes and tags, symbols and back-references.

Output: the novels in publication order (Sense and Sensibility, Pride and Prejudice,
Mansfield Park, Emma, Northanger Abbey, Persuasion), one line per element of each
character vector (NA as an empty line), novels separated by one blank line.

Usage: extract-austen.py PACKAGE_ROOT OUTPUT
  PACKAGE_ROOT is the janeaustenr directory (holding data/) or any directory above it.
Python 3 standard library only.
"""

import bz2
import gzip
import lzma
import os
import re
import struct
import sys
import zlib

NOVELS = [
    # (object name in the package, title), in publication order
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
]

# SEXP type codes (R internals, serialize.c)
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 17, 19, 20, 24, 25
# pseudo types used only inside serialization streams
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP = 255, 254, 253, 252
MISSINGARG_SXP, BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP = 251, 250, 249, 248
PERSISTSXP, EMPTYENV_SXP, BASEENV_SXP = 247, 242, 241
ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 240, 239, 238

# CHARSXP encoding bits, in the "levels" part of the flags word
LATIN1_MASK, UTF8_MASK, BYTES_MASK, ASCII_MASK = 1 << 2, 1 << 3, 1 << 1, 1 << 6

NA_INTEGER = -(2**31)


class RDataError(Exception):
    pass


class RObject:
    """A decoded R object: its type code, value and attributes (dict name -> object)."""

    def __init__(self, sexptype, value, attributes=None):
        self.sexptype = sexptype
        self.value = value
        self.attributes = attributes or {}

    def __repr__(self):
        return f"RObject(type={self.sexptype}, attrs={list(self.attributes)})"


class Pairlist:
    """Cells of a pairlist (LISTSXP/LANGSXP/...): list of (tag or None, value)."""

    def __init__(self, sexptype, cells):
        self.sexptype = sexptype
        self.cells = cells


class XdrReader:
    """Decoder for one R serialization stream in XDR (big-endian) format."""

    def __init__(self, data, origin):
        self.data = data
        self.pos = 0
        self.origin = origin
        self.refs = []
        self.native_encoding = "latin1"

    def fail(self, what):
        raise RDataError(f"{self.origin}: byte {self.pos}: {what}")

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"need {n} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int32(self):
        return struct.unpack(">i", self.take(4))[0]

    def length(self):
        n = self.int32()
        if n == -1:  # long vector: two more words, upper then lower 32 bits
            hi = self.int32()
            lo = self.int32()
            n = (hi << 32) | (lo & 0xFFFFFFFF)
        if n < 0:
            self.fail(f"negative length {n}")
        return n

    def header(self):
        magic = self.take(2)
        if magic != b"X\n":
            self.pos -= 2
            self.fail(f"expected XDR serialization 'X\\n', found {magic!r}")
        version = self.int32()
        self.int32()  # writer's R version
        self.int32()  # minimal reader R version
        if version == 3:
            n = self.int32()
            self.native_encoding = self.take(n).decode("ascii", "replace")
        elif version != 2:
            self.fail(f"serialization version {version} not supported (expected 2 or 3)")

    def read(self):
        self.header()
        return self.item()

    def charsxp(self, levels):
        n = self.int32()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        if levels & UTF8_MASK or levels & ASCII_MASK:
            return raw.decode("utf-8")
        if levels & LATIN1_MASK:
            return raw.decode("latin-1")
        if levels & BYTES_MASK:
            return raw.decode("latin-1")
        # native encoding of the writing session
        enc = self.native_encoding.lower()
        try:
            return raw.decode("utf-8" if enc in ("utf-8", "utf8") else enc)
        except (LookupError, UnicodeDecodeError):
            return raw.decode("latin-1")

    def attributes(self):
        attrs = self.item()
        if attrs is None:
            return {}
        if not isinstance(attrs, Pairlist):
            self.fail("attributes are not a pairlist")
        return {tag: value for tag, value in attrs.cells}

    def item(self):
        flags = self.int32()
        sexptype = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if sexptype == NILVALUE_SXP:
            return None
        if sexptype in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP,
                        MISSINGARG_SXP, BASENAMESPACE_SXP):
            return RObject(sexptype, None)
        if sexptype == REFSXP:
            index = flags >> 8
            if index == 0:
                index = self.int32()
            if not 1 <= index <= len(self.refs):
                self.fail(f"reference {index} out of range 1..{len(self.refs)}")
            return self.refs[index - 1]
        if sexptype in (PERSISTSXP, NAMESPACESXP, PACKAGESXP):
            names = self.item()  # a STRSXP without attributes
            obj = RObject(sexptype, names)
            self.refs.append(obj)
            return obj
        if sexptype == SYMSXP:
            name = self.item()  # CHARSXP, returned as str
            obj = RObject(SYMSXP, name)
            self.refs.append(obj)
            return obj
        if sexptype == ENVSXP:
            obj = RObject(ENVSXP, None)
            self.refs.append(obj)
            self.int32()  # locked
            enclos = self.item()
            frame = self.item()
            hashtab = self.item()
            attrs = self.item()
            obj.value = {"enclos": enclos, "frame": frame, "hashtab": hashtab}
            obj.attributes = {t: v for t, v in attrs.cells} if isinstance(attrs, Pairlist) else {}
            return obj
        if sexptype in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            # iterate along the CDR chain instead of recursing into it
            cells = []
            attrs = {}
            first = True
            while True:
                cell_attrs = self.attributes() if has_attr else {}
                if first:
                    attrs = cell_attrs
                    first = False
                tag = None
                if has_tag:
                    sym = self.item()
                    tag = sym.value if isinstance(sym, RObject) else sym
                cells.append((tag, self.item()))
                flags = self.int32()
                next_type = flags & 0xFF
                if next_type == NILVALUE_SXP:
                    break
                if next_type not in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP,
                                     ATTRLANGSXP, ATTRLISTSXP):
                    # an improper tail: step back and read it as the last value
                    self.pos -= 4
                    cells.append((None, self.item()))
                    break
                has_attr = bool(flags & (1 << 9))
                has_tag = bool(flags & (1 << 10))
            pl = Pairlist(sexptype, cells)
            if attrs:
                return RObject(sexptype, pl, attrs)
            return pl
        if sexptype == CHARSXP:
            return self.charsxp(levels)
        if sexptype == ALTREP_SXP:
            info = self.item()
            state = self.item()
            attrs = self.item()
            return self.altrep(info, state, attrs)

        if sexptype in (LGLSXP, INTSXP):
            n = self.length()
            value = list(struct.unpack(f">{n}i", self.take(4 * n)))
            value = [None if v == NA_INTEGER else v for v in value]
        elif sexptype == REALSXP:
            n = self.length()
            value = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif sexptype == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            value = [complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)]
        elif sexptype == RAWSXP:
            n = self.length()
            value = self.take(n)
        elif sexptype == STRSXP:
            n = self.length()
            value = []
            for _ in range(n):
                s = self.item()
                if s is not None and not isinstance(s, str):
                    self.fail("element of a character vector is not a CHARSXP")
                value.append(s)
        elif sexptype in (VECSXP, EXPRSXP):
            n = self.length()
            value = [self.item() for _ in range(n)]
        elif sexptype == S4SXP:
            value = None
        else:
            self.fail(f"SEXP type {sexptype} not supported")
        attrs = self.attributes() if has_attr else {}
        return RObject(sexptype, value, attrs)

    def altrep(self, info, state, attrs):
        # Compact integer/real sequences and wrapped/deferred vectors: expand the ones
        # whose state is self-describing; anything else is reported.
        cls = None
        if isinstance(info, Pairlist) and info.cells:
            head = info.cells[0][1]
            cls = head.value if isinstance(head, RObject) else None
        if cls in ("compact_intseq", "compact_realseq") and isinstance(state, RObject):
            n, start, step = state.value[:3]
            vals = [start + i * step for i in range(int(n))]
            kind = INTSXP if cls == "compact_intseq" else REALSXP
            if kind == INTSXP:
                vals = [int(v) for v in vals]
            obj = RObject(kind, vals)
        elif cls in ("wrap_integer", "wrap_real", "wrap_string", "wrap_logical", "wrap_list"):
            obj = state.cells[0][1] if isinstance(state, Pairlist) else state.value[0]
        elif cls == "deferred_string" and isinstance(state, Pairlist):
            src = state.cells[0][1]
            obj = RObject(STRSXP, [None if v is None else str(v) for v in src.value])
        else:
            self.fail(f"ALTREP class {cls!r} not supported")
        if isinstance(attrs, Pairlist):
            obj.attributes = {t: v for t, v in attrs.cells}
        return obj


def decompress_entry(blob, origin):
    if len(blob) < 5:
        raise RDataError(f"{origin}: entry of {len(blob)} bytes is too short")
    expected = struct.unpack(">I", blob[:4])[0]
    tag = blob[4:5]
    if tag == b"Z":
        out = bz2.decompress(blob[5:])
    elif tag == b"X":
        out = lzma.decompress(blob[5:])
    elif tag == b"0":
        out = blob[5:]
    else:
        out = zlib.decompress(blob[4:])
    if len(out) != expected:
        raise RDataError(f"{origin}: entry decompresses to {len(out)} bytes, header says {expected}")
    return out


def find_data_dir(root):
    for candidate in (os.path.join(root, "data"),
                      os.path.join(root, "usr/lib/R/site-library/janeaustenr/data"),
                      root):
        if os.path.isfile(os.path.join(candidate, "Rdata.rdx")):
            return candidate
    for dirpath, _dirs, files in os.walk(root):
        if "Rdata.rdx" in files and "Rdata.rdb" in files and "janeaustenr" in dirpath:
            return dirpath
    raise RDataError(f"{root}: no janeaustenr data/Rdata.rdx below this directory")


def load_index(path):
    with open(path, "rb") as f:
        raw = f.read()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    index = XdrReader(data, path).read()
    if not isinstance(index, RObject) or index.sexptype != VECSXP:
        raise RDataError(f"{path}: index is not a list")
    names = index.attributes.get("names")
    if names is None:
        raise RDataError(f"{path}: index list has no names")
    fields = dict(zip(names.value, index.value))
    variables = fields.get("variables")
    if variables is None:
        raise RDataError(f"{path}: index has no 'variables' entry")
    var_names = variables.attributes["names"].value
    table = {}
    for name, loc in zip(var_names, variables.value):
        if loc.sexptype != INTSXP or len(loc.value) != 2:
            raise RDataError(f"{path}: entry for {name!r} is not c(offset, length)")
        table[name] = tuple(loc.value)
    return table


def load_object(rdb_path, rdb, name, offset, length):
    origin = f"{rdb_path}[{name} @ {offset}]"
    if offset < 0 or offset + length > len(rdb):
        raise RDataError(f"{origin}: entry of {length} bytes runs past the file end ({len(rdb)})")
    data = decompress_entry(rdb[offset:offset + length], origin)
    return XdrReader(data, origin).read()


def lines_of(obj, name):
    """The text lines of a novel: a character vector, or the `text` column of a data frame."""
    if obj.sexptype == STRSXP:
        return obj.value
    if obj.sexptype == VECSXP:
        cols = obj.attributes.get("names")
        if cols is not None and "text" in cols.value:
            col = obj.value[cols.value.index("text")]
            if col.sexptype == STRSXP:
                return col.value
    raise RDataError(f"object {name!r}: expected a character vector or a data frame with "
                     f"a 'text' column, found SEXP type {obj.sexptype}")


def main(argv):
    if len(argv) != 3:
        print("usage: extract-austen.py PACKAGE_ROOT OUTPUT", file=sys.stderr)
        return 2
    root, output = argv[1], argv[2]
    try:
        data_dir = find_data_dir(root)
        rdx_path = os.path.join(data_dir, "Rdata.rdx")
        rdb_path = os.path.join(data_dir, "Rdata.rdb")
        table = load_index(rdx_path)
        missing = [n for n, _ in NOVELS if n not in table]
        if missing:
            raise RDataError(f"{rdx_path}: objects {missing} not found; present: {sorted(table)}")
        with open(rdb_path, "rb") as f:
            rdb = f.read()
        parts = []
        words = 0
        for name, title in NOVELS:
            offset, length = table[name]
            lines = lines_of(load_object(rdb_path, rdb, name, offset, length), name)
            lines = ["" if s is None else s for s in lines]
            n_words = sum(len(re.findall(r"\S+", s)) for s in lines)
            words += n_words
            print(f"  {title}: {len(lines)} lines, {n_words} words", file=sys.stderr)
            parts.append("\n".join(lines) + "\n")
        text = "\n".join(parts)
        tmp = output + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, output)
        print(f"  wrote {output}: {words} words, {len(text.encode('utf-8'))} bytes", file=sys.stderr)
    except (RDataError, OSError, zlib.error, lzma.LZMAError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
