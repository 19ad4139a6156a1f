#!/usr/bin/env python3
"""Writes the golden files of tests/golden/quants/ from PyPI's `gguf` package.

The expected values come from an implementation independent of spillway: the numpy
dequantizers and quantizers of the `gguf` Python package (gguf.quants.dequantize /
gguf.quants.quantize). Regenerate in a throwaway virtual environment:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf==0.19.0 numpy \
        && /tmp/v/bin/python scripts/make-golden-quants.py

The committed files were made with gguf 0.19.0 and numpy 2.4.6 (Python 3.11). The
script is deterministic (fixed seeds); rerunning it must reproduce the files byte for
byte.

Files (all little-endian), one pair per type:

  deq_<TYPE>.bin   dequantization golden
      char[4] "SWQD", u32 ggml type id, u32 n_row, u32 n_per_row,
      n_row rows of raw block bytes, then n_row * n_per_row f32 expected values.
  quant_<TYPE>.bin quantization golden (only for types gguf quantizes)
      char[4] "SWQQ", u32 ggml type id, u32 n_row, u32 n_per_row,
      n_row * n_per_row f32 inputs, then n_row rows of expected block bytes.

gguf 0.19.0 has no dequantizer for Q8_1 and Q8_K (activation formats); their expected
values are computed here with numpy directly as f32(d) * f32(q), which is the whole
definition of those two formats.
"""

import os
import struct
from importlib import metadata
import sys

import numpy as np

from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

OUT_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "quants"))

# (type, elements per block, bytes per block) as ggml lays them out. gguf's table says 40
# bytes for Q8_1 (an old layout with f32 fields); ggml's block_q8_1 holds two halves: 36.
LAYOUT = {
    T.F32: (1, 4),
    T.F16: (1, 2),
    T.BF16: (1, 2),
    T.Q4_0: (32, 18),
    T.Q4_1: (32, 20),
    T.Q5_0: (32, 22),
    T.Q5_1: (32, 24),
    T.Q8_0: (32, 34),
    T.Q8_1: (32, 36),
    T.Q2_K: (256, 84),
    T.Q3_K: (256, 110),
    T.Q4_K: (256, 144),
    T.Q5_K: (256, 176),
    T.Q6_K: (256, 210),
    T.Q8_K: (256, 292),
}

# Byte offsets of the f16 scale fields inside each block.
HALF_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q8_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def scale_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """n f16 scales: mostly ordinary magnitudes, plus zero, negative, subnormal, large."""
    s = (rng.standard_normal(n) * 0.02).astype(np.float16)
    special = np.array([0.0, -0.0, -0.0375, 2.0**-20, -(2.0**-24), 6.0e-5, 1000.0, -3.5], np.float16)
    k = min(n, len(special))
    pos = rng.choice(n, size=k, replace=False)
    s[pos] = special[:k]
    return s


def random_blocks(qtype: T, n_block: int, rng: np.random.Generator) -> np.ndarray:
    block_size, type_size = LAYOUT[qtype]
    if qtype == T.F32:
        v = (rng.standard_normal(n_block) * 3).astype(np.float32)
        v[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-45, -3.4e38]
        return v.view(np.uint8).reshape(n_block, 4)
    if qtype in (T.F16, T.BF16):
        # Random bit patterns: every class of value (subnormal, inf, NaN with payloads).
        bits = rng.integers(0, 1 << 16, size=n_block, dtype=np.uint16)
        bits[:6] = [0x0000, 0x8000, 0x0001, 0x7C00 if qtype == T.F16 else 0x7F80, 0xFFFF, 0x3C00]
        return bits.view(np.uint8).reshape(n_block, 2)
    blocks = rng.integers(0, 256, size=(n_block, type_size), dtype=np.uint8)
    if qtype == T.Q8_K:
        d = (rng.standard_normal(n_block) * 0.01).astype(np.float32)
        d[0] = 0.0
        if n_block > 2:
            d[2] = -1.5e-40  # an f32 subnormal
        blocks[:, 0:4] = d.view(np.uint8).reshape(n_block, 4)
        qs = blocks[:, 4:260].view(np.int8).astype(np.int16)
        bsums = qs.reshape(n_block, 16, 16).sum(axis=-1).astype(np.int16)
        blocks[:, 260:292] = bsums.view(np.uint8).reshape(n_block, 32)
        return blocks
    for off in HALF_FIELDS[qtype]:
        blocks[:, off:off + 2] = scale_values(rng, n_block).view(np.uint8).reshape(n_block, 2)
    return blocks


def expected_floats(qtype: T, blocks: np.ndarray) -> np.ndarray:
    if qtype == T.Q8_1:
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        return d * blocks[:, 4:36].copy().view(np.int8).astype(np.float32)
    if qtype == T.Q8_K:
        d = blocks[:, 0:4].copy().view(np.float32)
        return d * blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return np.asarray(dequantize(blocks.reshape(-1), qtype), dtype=np.float32)


def write_dequant(qtype: T, seed: int) -> str:
    rng = np.random.default_rng(seed)
    block_size, type_size = LAYOUT[qtype]
    n_row = 3
    n_per_row = 64 if block_size == 1 else (4 * block_size if block_size == 32 else 2 * block_size)
    n_block = n_row * n_per_row // block_size
    blocks = random_blocks(qtype, n_block, rng)
    expected = expected_floats(qtype, blocks).reshape(-1)
    assert expected.dtype == np.float32 and expected.size == n_row * n_per_row
    name = os.path.join(OUT_DIR, f"deq_{qtype.name}.bin")
    with open(name, "wb") as f:
        f.write(b"SWQD" + struct.pack("<III", int(qtype), n_row, n_per_row))
        f.write(blocks.tobytes())
        f.write(expected.astype("<f4").tobytes())
    return name


def quant_inputs(n_row: int, n_per_row: int, block_size: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n_row, n_per_row)).astype(np.float32)
    # Per-block magnitudes spread over a few decades, so the scales differ.
    mags = 10.0 ** rng.uniform(-3, 1, size=(n_row, n_per_row // block_size))
    x *= np.repeat(mags, block_size, axis=1).astype(np.float32)
    flat = x.reshape(-1, block_size)
    flat[0] = 0.0  # all-zero block
    flat[1] = 0.25  # constant block
    flat[2] = 0.0
    flat[2, 7] = -1.0  # single non-zero
    flat[3] = np.abs(flat[3])  # all positive
    return x


def half_specials() -> np.ndarray:
    """f32 inputs that exercise f32 -> f16 rounding: ties, subnormals, overflow, NaN."""
    v = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e10, -np.inf, np.inf,
         np.nan, 2.0**-14, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 3 * 2.0**-25, 2.0**-26,
         1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-11 + 2.0**-20, 6.1e-5, 5.96e-8,
         0.1, -0.3, 1e-8, 2049.0, 2051.0, 4097.0, 3.14159265, 1.0 - 2.0**-12, 1.0 - 2.0**-13]
    return np.array(v, dtype=np.float32)


def bf16_specials() -> np.ndarray:
    bits = np.array([0x00000000, 0x80000000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF,
                     0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0x7FC00000, 0x7F800001, 0xFF800001,
                     0x00000001, 0x00008000, 0x00018000, 0x7FFFFFFF], dtype=np.uint32)
    return bits.view(np.float32)


def write_quant(qtype: T, seed: int) -> str:
    rng = np.random.default_rng(seed)
    block_size, _ = LAYOUT[qtype]
    n_row = 3
    if block_size == 1:
        n_per_row = 64
        x = (rng.standard_normal((n_row, n_per_row)) * 10.0 ** rng.uniform(-9, 5, (n_row, n_per_row)))
        x = x.astype(np.float32)
        specials = half_specials() if qtype == T.F16 else bf16_specials()
        x.reshape(-1)[: specials.size] = specials
    else:
        n_per_row = 8 * block_size
        x = quant_inputs(n_row, n_per_row, block_size, rng)
    if qtype == T.F16:
        with np.errstate(over="ignore"):  # values past 65504 become inf on purpose
            q = x.astype(np.float16).view(np.uint8)  # numpy: round to nearest even
    else:
        q = np.asarray(quantize(x, qtype)).view(np.uint8)
    q = q.reshape(n_row, -1)
    name = os.path.join(OUT_DIR, f"quant_{qtype.name}.bin")
    with open(name, "wb") as f:
        f.write(b"SWQQ" + struct.pack("<III", int(qtype), n_row, n_per_row))
        f.write(x.astype("<f4").tobytes())
        f.write(q.tobytes())
    return name


def main() -> int:
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"gguf {metadata.version('gguf')}, numpy {np.__version__}", file=sys.stderr)
    for i, qtype in enumerate(LAYOUT):
        print(write_dequant(qtype, seed=1000 + i), file=sys.stderr)
    for i, qtype in enumerate([T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]):
        print(write_quant(qtype, seed=2000 + i), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
