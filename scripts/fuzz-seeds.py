#!/usr/bin/env python3
"""Writes GGUF-reader seeds from the real models' headers, tensor data cut.

usage: scripts/fuzz-seeds.py OUT_DIR MODEL.gguf [MODEL.gguf ...]

For each model: (1) the raw first 4 KiB and 64 KiB (a header the reader must reject as
truncated); (2) a compact but valid file: every metadata key of the real header in its
order and type, each array cut to its first 32 items, and the three smallest tensors'
infos (name, type, shape as in the model) with zeroed data at recomputed offsets.
"""
import os
import struct
import sys

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
          11: "<q", 12: "<d"}
# ggml type id -> (block elements, block bytes) for the types these models use.
BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
         10: (256, 84), 11: (256, 110), 12: (256, 144),
         13: (256, 176), 14: (256, 210), 30: (1, 2)}
KEEP_ITEMS = 32


class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.p)[0]
        self.p += struct.calcsize(fmt)
        return v

    def raw(self, n):
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def string(self):
        return self.raw(self.take("<Q"))


def read_value(r, t):
    """Returns the value re-encoded (arrays cut to KEEP_ITEMS items)."""
    if t in SCALAR:
        return struct.pack(SCALAR[t], r.take(SCALAR[t]))
    if t == 8:
        s = r.string()
        return struct.pack("<Q", len(s)) + s
    if t == 9:
        et, n = r.take("<I"), r.take("<Q")
        items = [read_value(r, et) for _ in range(n)]
        kept = items[:KEEP_ITEMS]
        return struct.pack("<IQ", et, len(kept)) + b"".join(kept)
    raise ValueError(f"unknown value type {t} at byte {r.p}")


def compact(path):
    with open(path, "rb") as f:
        head = f.read(64 << 20)  # the header of these models is well under 64 MiB
    r = Reader(head)
    assert r.raw(4) == b"GGUF", path
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kvs, alignment = [], 32
    for _ in range(n_kv):
        key = r.string()
        t = r.take("<I")
        v = read_value(r, t)
        if key == b"general.alignment":
            alignment = struct.unpack("<I", v)[0]
        kvs.append(struct.pack("<Q", len(key)) + key + struct.pack("<I", t) + v)
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        nd = r.take("<I")
        ne = [r.take("<Q") for _ in range(nd)]
        t = r.take("<I")
        r.take("<Q")
        n = 1
        for d in ne:
            n *= d
        blk, size = BLOCK[t]
        infos.append((n // blk * size, name, ne, t))
    infos.sort()
    kept = infos[:3]
    out = b"GGUF" + struct.pack("<IQQ", version, len(kept), len(kvs)) + b"".join(kvs)
    offset = 0
    for nbytes, name, ne, t in kept:
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", d) for d in ne) + struct.pack("<IQ", t, offset)
        offset = (offset + nbytes + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    return head, out + bytes(offset)


def main():
    out_dir, models = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    for m in models:
        stem = os.path.splitext(os.path.basename(m))[0]
        head, small = compact(m)
        for n in (4 << 10, 64 << 10):
            with open(os.path.join(out_dir, f"{stem}.head{n >> 10}k"), "wb") as f:
                f.write(head[:n])
        with open(os.path.join(out_dir, f"{stem}.compact.gguf"), "wb") as f:
            f.write(small)
        print(f"{m}: compact header {len(small)} bytes")


if __name__ == "__main__":
    main()
