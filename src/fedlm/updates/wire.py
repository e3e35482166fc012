"""The bytes an update takes on the wire, and the serialization those counts are exact for.

Each payload is a 16-byte header followed by raw little-endian arrays:

    magic "FDLM" | version u8 | kind u8 | bits u8 | flags u8 | size u32 | chunk u32
    dense             float32 values[size]
    quantized         float32 scales[ceil(size / chunk)] | codes (int8[size], or 4-bit pairs)
    sparse            float32 values[size] | uint32 indices[size] if flags has INDICES
    quantized_sparse  the quantized body of the kept values | uint32 indices as above

`size` counts the values sent (for a sparse update, the kept ones). A random mask's
indices are left out: the server redraws them from the round's shared seed. Flags bit
ROTATED says the quantized body holds the randomized Hadamard rotation of those values
(updates.rotate), zero-padded to padded_size(size) codes; `size` still counts the values
and the indices, so a rotated top-k update sends k indices, not padded_size(k).

We write our own format rather than safetensors because safetensors puts a JSON header
(names, dtypes, shapes, offsets: typically 100 bytes or more) before every tensor set,
which is several percent of a small compressed LoRA update and varies with the names;
a fixed header makes `*_bytes` a closed form, equal to len(serialize_*) by construction.
Integrity against tampering is the transport's job (TLS); `deserialize` checks structure
(magic, version, kind, lengths, value ranges) so a truncated payload is refused, not misread.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from fedlm.updates.quantize import BITS, Quantized, chunk_count, code_bytes, levels, unpacked_codes
from fedlm.updates.rotate import padded_size

MAGIC = b"FDLM"
VERSION = 1
HEADER_FORMAT = "<4sBBBBII"  # magic, version, kind, bits, flags, size, chunk
HEADER_BYTES = struct.calcsize(HEADER_FORMAT)
KINDS = ("dense", "quantized", "sparse", "quantized_sparse")  # kind byte = position + 1
INDICES = 1  # flags bit: uint32 indices follow the values
ROTATED = 2  # flags bit: the quantized body is the rotation of the values, padded to a power of two
FLOAT = np.dtype("<f4")
INDEX = np.dtype("<u4")


def dense_bytes(size: int) -> int:
    return HEADER_BYTES + FLOAT.itemsize * size


def quantized_bytes(size: int, *, bits: int, chunk: int, rotated: bool = False) -> int:
    """`size` values quantized; rotated, the body holds padded_size(size) codes."""
    coded = padded_size(size) if rotated else size
    return HEADER_BYTES + FLOAT.itemsize * chunk_count(coded, chunk=chunk) + code_bytes(coded, bits=bits)


def sparse_bytes(kept: int, *, with_indices: bool) -> int:
    return HEADER_BYTES + FLOAT.itemsize * kept + (INDEX.itemsize * kept if with_indices else 0)


def quantized_sparse_bytes(kept: int, *, bits: int, chunk: int, with_indices: bool, rotated: bool = False) -> int:
    """Quantized values of a sparse update, plus their indices unless a shared seed gives them."""
    return quantized_bytes(kept, bits=bits, chunk=chunk, rotated=rotated) + (INDEX.itemsize * kept if with_indices else 0)


def _header(kind: str, *, size: int, bits: int = 0, chunk: int = 0, with_indices: bool = False,
            rotated: bool = False) -> bytes:
    if not 0 <= size < 2**32 or not 0 <= chunk < 2**32:
        raise ValueError(f"size and chunk must fit in 32 bits, got {size} and {chunk}")
    flags = INDICES * with_indices | ROTATED * rotated
    return struct.pack(HEADER_FORMAT, MAGIC, VERSION, KINDS.index(kind) + 1, bits, flags, size, chunk)


def _values_count(q: Quantized, rotated_from: int | None) -> int:
    """The values a quantized body stands for: q.size, or the length before the rotation's padding."""
    if rotated_from is None:
        return q.size
    if padded_size(rotated_from) != q.size:
        raise ValueError(f"the rotation of {rotated_from} values has {padded_size(rotated_from)} codes, got {q.size}")
    return rotated_from


def _index_bytes(indices: np.ndarray | None, *, kept: int) -> bytes:
    if indices is None:
        return b""
    if indices.shape != (kept,):
        raise ValueError(f"{kept} values need {kept} indices, got shape {indices.shape}")
    if kept and (indices[0] < 0 or indices[-1] >= 2**32 or np.any(np.diff(indices) <= 0)):
        raise ValueError("indices must be strictly increasing and fit in uint32, as top_k and random_mask give them")
    return indices.astype(INDEX).tobytes()


def _quantized_body(q: Quantized) -> bytes:
    return q.scales.astype(FLOAT).tobytes() + q.codes.tobytes()


def serialize_dense(vector: np.ndarray) -> bytes:
    """Header + float32 values."""
    return _header("dense", size=vector.size) + vector.astype(FLOAT).tobytes()


def serialize_quantized(q: Quantized, *, rotated_from: int | None = None) -> bytes:
    """Header + float32 scales + codes; `rotated_from`: q quantizes the rotation of that many values."""
    size = _values_count(q, rotated_from)
    header = _header("quantized", size=size, bits=q.bits, chunk=q.chunk, rotated=rotated_from is not None)
    return header + _quantized_body(q)


def serialize_sparse(values: np.ndarray, indices: np.ndarray | None) -> bytes:
    """Header + float32 values + uint32 indices; indices None when a shared seed gives the mask."""
    tail = _index_bytes(indices, kept=values.size)
    return _header("sparse", size=values.size, with_indices=indices is not None) + values.astype(FLOAT).tobytes() + tail


def serialize_quantized_sparse(q: Quantized, indices: np.ndarray | None, *, rotated_from: int | None = None) -> bytes:
    """Header + the quantized kept values + uint32 indices unless a shared seed gives them;
    `rotated_from`: q quantizes the rotation of that many kept values."""
    kept = _values_count(q, rotated_from)
    tail = _index_bytes(indices, kept=kept)
    header = _header("quantized_sparse", size=kept, bits=q.bits, chunk=q.chunk, with_indices=indices is not None,
                     rotated=rotated_from is not None)
    return header + _quantized_body(q) + tail


def read_header(data: bytes) -> tuple[str, int, int, int, int]:
    """kind, size, bits, flags, chunk; checks every field that does not need the body."""
    if len(data) < HEADER_BYTES:
        raise ValueError(f"payload of {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header")
    magic, version, kind_byte, bits, flags, size, chunk = struct.unpack_from(HEADER_FORMAT, data)
    if magic != MAGIC:
        raise ValueError(f"not a fedlm update: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"unsupported wire version {version}, this reader knows {VERSION}")
    if not 1 <= kind_byte <= len(KINDS):
        raise ValueError(f"unknown payload kind {kind_byte}")
    kind = KINDS[kind_byte - 1]
    quantized = kind.startswith("quantized")
    if (quantized and (bits not in BITS or chunk < 1)) or (not quantized and (bits or chunk)):
        raise ValueError(f"a {kind} payload cannot have bits={bits}, chunk={chunk}")
    if flags & ~(INDICES | ROTATED) or (flags & INDICES and not kind.endswith("sparse")) or (flags & ROTATED and not quantized):
        raise ValueError(f"a {kind} payload cannot have flags {flags:#x}")
    return kind, size, bits, flags, chunk


def _expected_bytes(kind: str, *, size: int, bits: int, flags: int, chunk: int) -> int:
    with_indices, rotated = bool(flags & INDICES), bool(flags & ROTATED)
    if kind == "dense":
        return dense_bytes(size)
    if kind == "quantized":
        return quantized_bytes(size, bits=bits, chunk=chunk, rotated=rotated)
    if kind == "sparse":
        return sparse_bytes(size, with_indices=with_indices)
    return quantized_sparse_bytes(size, bits=bits, chunk=chunk, with_indices=with_indices, rotated=rotated)


def _read_quantized(data: bytes, *, size: int, bits: int, chunk: int) -> Quantized:
    count = chunk_count(size, chunk=chunk)
    scales = np.frombuffer(data, FLOAT, count, HEADER_BYTES).astype(np.float32)
    codes_dtype = np.int8 if bits == 8 else np.uint8
    codes = np.frombuffer(data, codes_dtype, code_bytes(size, bits=bits), HEADER_BYTES + FLOAT.itemsize * count).copy()
    if not np.all(np.isfinite(scales) & (scales >= 0)):
        raise ValueError("quantized payload has a negative or non-finite scale")
    q = Quantized(codes, scales, size, bits, chunk)
    odd_pad = bits == 4 and size % 2 and codes[-1] >> 4  # an odd length leaves the last high nibble 0
    if (size and unpacked_codes(q).min() < -levels(bits)) or odd_pad:
        raise ValueError(f"quantized payload has a code outside the {bits}-bit grid")
    return q


def _read_indices(data: bytes, *, kept: int) -> np.ndarray:
    indices = np.frombuffer(data, INDEX, kept, len(data) - INDEX.itemsize * kept).astype(np.int64)
    if np.any(np.diff(indices) <= 0):
        raise ValueError("sparse payload's indices are not strictly increasing")
    return indices


def deserialize(data: bytes) -> tuple[str, dict[str, Any]]:
    """The kind and its fields: dense {vector}, quantized {quantized, rotated_from},
    sparse {values, indices}, quantized_sparse {quantized, indices, rotated_from}; indices None when
    not sent, rotated_from (the values before the rotation's padding) None when not rotated."""
    kind, size, bits, flags, chunk = read_header(data)
    expected = _expected_bytes(kind, size=size, bits=bits, flags=flags, chunk=chunk)
    if len(data) != expected:
        raise ValueError(f"a {kind} payload of {size} values takes {expected} bytes, got {len(data)}")
    indices = _read_indices(data, kept=size) if flags & INDICES else None
    if kind == "dense":
        return kind, {"vector": np.frombuffer(data, FLOAT, size, HEADER_BYTES).astype(np.float32)}
    if kind == "sparse":
        return kind, {"values": np.frombuffer(data, FLOAT, size, HEADER_BYTES).astype(np.float32), "indices": indices}
    rotated_from = size if flags & ROTATED else None
    coded = padded_size(size) if rotated_from is not None else size
    fields = {"quantized": _read_quantized(data, size=coded, bits=bits, chunk=chunk), "rotated_from": rotated_from}
    return kind, fields if kind == "quantized" else fields | {"indices": indices}
