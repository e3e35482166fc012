"""Wire format: the byte counts equal the serialized lengths, round trips are exact, bad payloads refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fedlm.updates.quantize import dequantize, quantize
from fedlm.updates.sparsify import random_mask, top_k
from fedlm.updates.wire import (
    HEADER_BYTES,
    HEADER_FORMAT,
    dense_bytes,
    deserialize,
    quantized_bytes,
    quantized_sparse_bytes,
    serialize_dense,
    serialize_quantized,
    serialize_quantized_sparse,
    serialize_sparse,
    sparse_bytes,
)

SIZES = [0, 1, 7, 2048, 2049, 5001]


def random_vector(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


def assert_same_quantized(a, b):
    assert (a.size, a.bits, a.chunk) == (b.size, b.bits, b.chunk)
    assert a.codes.dtype == b.codes.dtype and np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)


def test_header_is_16_bytes():
    assert HEADER_BYTES == struct.calcsize(HEADER_FORMAT) == 16


def test_dense_worked_example_byte_for_byte():
    data = serialize_dense(np.array([1.0, -2.0], dtype=np.float32))
    assert data == b"FDLM" + bytes([1, 1, 0, 0]) + (2).to_bytes(4, "little") + bytes(4) + bytes.fromhex("0000803f000000c0")
    assert dense_bytes(2) == len(data) == 24


@pytest.mark.parametrize("size", SIZES)
def test_dense_bytes_and_round_trip(size):
    vector = random_vector(size)
    data = serialize_dense(vector)
    kind, fields = deserialize(data)
    assert dense_bytes(size) == len(data)
    assert kind == "dense" and fields["vector"].dtype == np.float32 and np.array_equal(fields["vector"], vector)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("chunk", [1, 256, 2048])
def test_quantized_bytes_and_round_trip(bits, size, chunk):
    q = quantize(random_vector(size), bits=bits, chunk=chunk, rng=np.random.default_rng(0))
    data = serialize_quantized(q)
    kind, fields = deserialize(data)
    assert quantized_bytes(size, bits=bits, chunk=chunk) == len(data)
    assert kind == "quantized"
    assert_same_quantized(fields["quantized"], q)
    assert np.array_equal(dequantize(fields["quantized"]), dequantize(q))


def test_quantized_bytes_worked_example():
    # 5001 values, 4 bits, chunk 2048: 3 scales (12 bytes) and 2501 code bytes
    assert quantized_bytes(5001, bits=4, chunk=2048) == 16 + 12 + 2501


@pytest.mark.parametrize("size", [1, 7, 5001])
@pytest.mark.parametrize("with_indices", [True, False])
def test_sparse_bytes_and_round_trip(size, with_indices):
    vector = random_vector(size)
    indices = top_k(vector, fraction=0.3) if with_indices else random_mask(size, fraction=0.3, seed=1)
    values = vector[indices]
    data = serialize_sparse(values, indices if with_indices else None)
    kind, fields = deserialize(data)
    assert sparse_bytes(values.size, with_indices=with_indices) == len(data)
    assert kind == "sparse" and np.array_equal(fields["values"], values)
    assert np.array_equal(fields["indices"], indices) if with_indices else fields["indices"] is None


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kept", [1, 7, 2049])
@pytest.mark.parametrize("with_indices", [True, False])
def test_quantized_sparse_bytes_and_round_trip(bits, kept, with_indices):
    indices = np.arange(0, 3 * kept, 3, dtype=np.int64)
    q = quantize(random_vector(kept), bits=bits, chunk=512, rng=np.random.default_rng(0))
    data = serialize_quantized_sparse(q, indices if with_indices else None)
    kind, fields = deserialize(data)
    assert quantized_sparse_bytes(kept, bits=bits, chunk=512, with_indices=with_indices) == len(data)
    assert kind == "quantized_sparse"
    assert_same_quantized(fields["quantized"], q)
    assert np.array_equal(fields["indices"], indices) if with_indices else fields["indices"] is None


def test_sparse_serialization_refuses_unsorted_or_mismatched_indices():
    with pytest.raises(ValueError, match="strictly increasing"):
        serialize_sparse(np.ones(3, np.float32), np.array([2, 1, 5]))
    with pytest.raises(ValueError, match="3 values need 3 indices"):
        serialize_sparse(np.ones(3, np.float32), np.array([1, 2]))


def quantized_payload(bits: int = 4, size: int = 9) -> bytes:
    return serialize_quantized(quantize(random_vector(size), bits=bits, chunk=4, rng=np.random.default_rng(0)))


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: d[:-1], "takes"),  # truncated body
        (lambda d: d + b"\x00", "takes"),  # trailing garbage
        (lambda d: d[:10], "shorter than"),  # truncated header
        (lambda d: b"", "shorter than"),
        (lambda d: patched(d, 0, b"XXXX"), "magic"),
        (lambda d: patched(d, 4, b"\x02"), "version"),
        (lambda d: patched(d, 5, b"\x09"), "kind"),
        (lambda d: patched(d, 6, b"\x03"), "bits"),
        (lambda d: patched(d, 7, b"\x01"), "flags"),  # indices flag on a non-sparse kind
        (lambda d: patched(d, 8, (100).to_bytes(4, "little")), "takes"),  # size no longer matches
        (lambda d: patched(d, 12, bytes(4)), "chunk"),  # chunk 0
        (lambda d: patched(d, 16, np.float32(-1.0).tobytes()), "scale"),
        (lambda d: patched(d, len(d) - 1, b"\xf0"), "grid"),  # odd length: pad nibble not 0
        (lambda d: patched(d, len(d) - 2, b"\x88"), "grid"),  # nibble 8 is -8, off the [-7, 7] grid
    ],
)
def test_corrupted_quantized_payload_is_refused(corrupt, message):
    with pytest.raises(ValueError, match=message):
        deserialize(corrupt(quantized_payload()))


def test_8_bit_code_minus_128_is_refused():
    data = quantized_payload(bits=8)
    with pytest.raises(ValueError, match="grid"):
        deserialize(patched(data, len(data) - 1, b"\x80"))


def test_corrupted_sparse_indices_are_refused():
    data = serialize_sparse(np.ones(3, np.float32), np.array([1, 4, 9]))
    with pytest.raises(ValueError, match="strictly increasing"):
        deserialize(patched(data, len(data) - 4, (2).to_bytes(4, "little")))
    with pytest.raises(ValueError, match="takes"):
        deserialize(data[:-4])
