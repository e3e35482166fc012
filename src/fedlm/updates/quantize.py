"""Stochastic uniform quantization of an update, with one scale per chunk.

QSGD (Alistarh et al. 2017, arXiv:1610.02132) and the stochastic-rounding quantizer of
Suresh et al. 2017 (arXiv:1611.00429). Each chunk of `chunk` coordinates is divided by
its largest magnitude s and mapped onto the symmetric grid {-L, ..., L} * s / L, with
L = 2**(bits-1) - 1. A coordinate between two grid points goes up with probability equal
to its distance from the lower one, so E[dequantize(quantize(x))] = x exactly and no
coordinate moves by more than s / L. One scale per chunk, not per vector, keeps a single
large coordinate from flattening the rest to zero; a randomized Hadamard rotation first
(`fedlm.updates.rotate`) brings s down towards the RMS.

Codes are int8 for 8 bits. For 4 bits two codes share a byte as 4-bit two's complement,
the earlier code in the low nibble; an odd length pads the last high nibble with 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = (4, 8)


def levels(bits: int) -> int:
    """L: the grid's levels on each side of zero (127 for 8 bits, 7 for 4)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    return 2 ** (bits - 1) - 1


def chunk_count(size: int, *, chunk: int) -> int:
    """How many scales a vector of `size` needs: the last chunk may be short."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return -(-size // chunk)


def code_bytes(size: int, *, bits: int) -> int:
    """Bytes taken by `size` codes: one each for 8 bits, one per pair for 4."""
    levels(bits)
    return size if bits == 8 else -(-size // 2)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Quantized:
    """One quantized update: what the client sends instead of float32 values."""

    codes: np.ndarray  # int8 for bits=8; uint8, two codes per byte, for bits=4
    scales: np.ndarray  # float32, one per chunk: max |x| in the chunk
    size: int  # original length
    bits: int
    chunk: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")
        dtype = np.dtype(np.int8 if self.bits == 8 else np.uint8)
        codes_shape = (code_bytes(self.size, bits=self.bits),)
        scales_shape = (chunk_count(self.size, chunk=self.chunk),)
        if self.codes.dtype != dtype or self.codes.shape != codes_shape:
            raise ValueError(f"{self.bits}-bit codes of {self.size} values must be {dtype}{codes_shape}, "
                             f"got {self.codes.dtype}{self.codes.shape}")
        if self.scales.dtype != np.float32 or self.scales.shape != scales_shape:
            raise ValueError(f"scales must be float32{scales_shape}, got {self.scales.dtype}{self.scales.shape}")


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 codes in [-8, 7] -> uint8 bytes, two per byte, the earlier in the low nibble."""
    nibbles = np.zeros(2 * code_bytes(codes.size, bits=4), dtype=np.uint8)
    nibbles[: codes.size] = codes.astype(np.int8, copy=False).view(np.uint8) & 0x0F
    pairs = nibbles.reshape(-1, 2)  # (bytes, 2): low nibble, high nibble
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: np.ndarray, *, size: int) -> np.ndarray:
    """The inverse of `pack_int4`: `size` int8 codes."""
    nibbles = np.empty(2 * packed.size, dtype=np.uint8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    return (nibbles[:size] ^ 8).view(np.int8) - 8  # sign-extend 4-bit two's complement


def unpacked_codes(q: Quantized) -> np.ndarray:
    """The codes as int8, one per coordinate."""
    return q.codes if q.bits == 8 else unpack_int4(q.codes, size=q.size)


def quantize(vector: np.ndarray, *, bits: int, chunk: int, rng: np.random.Generator) -> Quantized:
    """Stochastically round `vector` onto the per-chunk grid; unbiased, error <= s / L."""
    top = levels(bits)
    count = chunk_count(vector.size, chunk=chunk)
    if vector.ndim != 1:
        raise ValueError(f"an update is one flat vector, got shape {vector.shape}")
    rows = np.zeros((count, chunk), dtype=np.float32)  # (chunks, chunk), the tail zero-padded
    rows.reshape(-1)[: vector.size] = vector
    scales = np.abs(rows).max(axis=1, initial=0.0)
    if not np.isfinite(scales).all():
        raise ValueError("cannot quantize a vector with inf or nan values")
    inverse = np.divide(top, scales, out=np.zeros_like(scales), where=scales > 0)  # all-zero chunk: codes 0
    scaled = rows * inverse[:, None]  # in [-L, L]
    low = np.floor(scaled)
    up = rng.random(scaled.shape, dtype=np.float32) < scaled - low  # Bernoulli(frac)
    # the clip only catches float32 rounding of x * (L / s) just past L when x = s
    codes = np.clip(low + up, -top, top).astype(np.int8).reshape(-1)[: vector.size]
    packed = codes if bits == 8 else pack_int4(codes)
    return Quantized(packed, scales, vector.size, bits, chunk)


def dequantize(q: Quantized) -> np.ndarray:
    """float32 values of length `q.size`: code * s / L."""
    step = q.scales / np.float32(levels(q.bits))
    return unpacked_codes(q) * np.repeat(step, q.chunk)[: q.size]


def quantize_dequantize_(vector: np.ndarray, *, bits: int, chunk: int, rng: np.random.Generator) -> None:
    """The lossy channel in place: vector <- dequantize(quantize(vector))."""
    vector[...] = dequantize(quantize(vector, bits=bits, chunk=chunk, rng=rng))
