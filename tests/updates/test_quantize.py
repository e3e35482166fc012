"""Stochastic quantization: bounded error, unbiased over seeded draws, exact 4-bit packing."""

from __future__ import annotations


import numpy as np
import pytest

from fedlm.updates.quantize import (
    Quantized,
    dequantize,
    levels,
    pack_int4,
    quantize,
    quantize_dequantize_,
    unpack_int4,
    unpacked_codes,
)


def random_vector(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


def step_per_coordinate(q: Quantized) -> np.ndarray:
    """s / L for each coordinate: the grid spacing of its chunk."""
    return np.repeat(q.scales.astype(np.float64) / levels(q.bits), q.chunk)[: q.size]


def test_levels_are_symmetric_signed_grids():
    assert levels(8) == 127 and levels(4) == 7


def test_worked_example_on_the_8_bit_grid():
    # Prepare: s = 1, so x * 127 = [63.5, -127, 31.75, 0]
    vector = np.array([0.5, -1.0, 0.25, 0.0], dtype=np.float32)
    # Execute
    q = quantize(vector, bits=8, chunk=4, rng=np.random.default_rng(0))
    # Assert: grid points stay put, the others land on a neighbour
    assert q.scales.tolist() == [1.0] and q.codes.dtype == np.int8
    assert q.codes[0] in (63, 64) and q.codes[1] == -127 and q.codes[2] in (31, 32) and q.codes[3] == 0


@pytest.mark.parametrize("bits", [4, 8])
def test_error_per_coordinate_is_at_most_one_grid_step(bits):
    vector = random_vector(10_001)
    q = quantize(vector, bits=bits, chunk=256, rng=np.random.default_rng(1))
    error = np.abs(dequantize(q).astype(np.float64) - vector)
    assert q.scales.tolist() == [np.abs(c).max() for c in np.array_split(vector, range(256, 10_001, 256))]
    assert np.all(error <= step_per_coordinate(q) * (1 + 1e-6))
    assert np.abs(unpacked_codes(q)).max() <= levels(bits)


def test_mean_of_2000_draws_is_within_4_standard_errors():
    # Prepare: 4 bits, so the grid is coarse and the rounding noise large
    vector = random_vector(64, seed=2)
    bits, chunk, draws = 4, 16, 2000
    rng = np.random.default_rng(3)
    # Execute
    samples = [dequantize(quantize(vector, bits=bits, chunk=chunk, rng=rng)) for _ in range(draws)]
    mean = np.mean(samples, axis=0, dtype=np.float64)  # float32 accumulation would drift by ~1e-4
    # Assert: each code is floor(y) + Bernoulli(frac(y)), so the variance is step^2 frac (1 - frac)
    step = step_per_coordinate(quantize(vector, bits=bits, chunk=chunk, rng=rng))
    scaled = vector / step
    frac = scaled - np.floor(scaled)
    standard_error = step * np.sqrt(frac * (1 - frac) / draws)
    assert np.all(np.abs(mean - vector) <= 4 * standard_error + 1e-6)


def test_same_seed_gives_identical_codes():
    vector = random_vector(5000)
    first = quantize(vector, bits=4, chunk=128, rng=np.random.default_rng(7))
    second = quantize(vector, bits=4, chunk=128, rng=np.random.default_rng(7))
    other = quantize(vector, bits=4, chunk=128, rng=np.random.default_rng(8))
    assert np.array_equal(first.codes, second.codes) and np.array_equal(first.scales, second.scales)
    assert not np.array_equal(first.codes, other.codes)


@pytest.mark.parametrize("size", [1, 2, 15, 1001])
def test_4_bit_packing_round_trips_codes_exactly(size):
    codes = np.resize(np.arange(-7, 8, dtype=np.int8), size)
    np.random.default_rng(size).shuffle(codes)
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.size == (size + 1) // 2
    assert np.array_equal(unpack_int4(packed, size=size), codes)


def test_4_bit_nibble_layout_is_low_first_twos_complement():
    assert pack_int4(np.array([-1, 7, 3], dtype=np.int8)).tolist() == [0x7F, 0x03]


def test_4_bit_quantize_of_odd_length_keeps_every_code():
    vector = random_vector(101)
    q = quantize(vector, bits=4, chunk=10, rng=np.random.default_rng(0))
    assert q.codes.shape == (51,) and q.scales.shape == (11,)
    assert np.all(np.abs(dequantize(q) - vector) <= step_per_coordinate(q) * (1 + 1e-6))


def test_zero_vector_gives_zero_scales_and_codes_without_dividing_by_zero():
    with np.errstate(all="raise"):
        q = quantize(np.zeros(10, dtype=np.float32), bits=8, chunk=4, rng=np.random.default_rng(0))
        restored = dequantize(q)
    assert q.scales.tolist() == [0.0, 0.0, 0.0] and not q.codes.any() and not restored.any()


def test_chunk_larger_than_vector_uses_one_scale():
    vector = np.array([0.3, -2.0, 1.1], dtype=np.float32)
    q = quantize(vector, bits=8, chunk=2048, rng=np.random.default_rng(0))
    assert q.scales.tolist() == [2.0] and q.codes[1] == -127
    assert np.all(np.abs(dequantize(q) - vector) <= 2.0 / 127 * (1 + 1e-6))


def test_quantize_dequantize_in_place_matches_the_two_steps():
    vector = random_vector(300)
    expected = dequantize(quantize(vector, bits=8, chunk=64, rng=np.random.default_rng(5)))
    quantize_dequantize_(vector, bits=8, chunk=64, rng=np.random.default_rng(5))
    assert vector.dtype == np.float32 and np.array_equal(vector, expected)


@pytest.mark.parametrize(("bits", "chunk"), [(2, 8), (16, 8), (8, 0)])
def test_invalid_bits_or_chunk_are_refused_and_the_vector_is_unchanged(bits, chunk):
    vector = random_vector(20)
    before = vector.copy()
    with pytest.raises(ValueError, match="bits|chunk"):
        quantize_dequantize_(vector, bits=bits, chunk=chunk, rng=np.random.default_rng(0))
    assert np.array_equal(vector, before)


def test_non_finite_values_are_refused_and_the_vector_is_unchanged():
    vector = np.array([1.0, np.inf, 0.5], dtype=np.float32)
    with pytest.raises(ValueError, match="inf or nan"):
        quantize_dequantize_(vector, bits=8, chunk=2, rng=np.random.default_rng(0))
    assert vector.tolist() == [1.0, np.inf, 0.5]


def test_quantized_refuses_arrays_that_do_not_match_its_size():
    with pytest.raises(ValueError, match="scales must be float32"):
        Quantized(np.zeros(5, np.int8), np.zeros(2, np.float32), 5, 8, 2)
    with pytest.raises(ValueError, match="4-bit codes of 5 values"):
        Quantized(np.zeros(5, np.uint8), np.zeros(3, np.float32), 5, 4, 2)
