"""The client encoder: compression as the server would decode it, and bytes equal to the wire."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.config import CompressionSettings, LoraSettings, StrategySettings
from fedlm.core.rng import derive_seed, make_rng
from fedlm.core.types import Task
from fedlm.core.vectors import make_spec
from fedlm.updates import wire
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import make_encoder, mask_seed
from fedlm.updates.pipeline import PipelineError, Stage, Step, check_chain
from fedlm.updates.quantize import dequantize, quantize
from fedlm.updates.rotate import rotate
from fedlm.updates.sparsify import random_mask, top_k

SIZE = 1000
SPEC = make_spec([("m.lora_A.w", (10, 50)), ("m.lora_B.w", (50, 10))])
SEED = 11


def encoder(**compression):
    pipeline = build_pipeline(StrategySettings(), LoraSettings(), SPEC, None, CompressionSettings(**compression))
    return make_encoder(pipeline, seed=SEED)


def delta(seed=0):
    return np.random.default_rng(seed).normal(size=SIZE).astype(np.float32)


TASK = Task(round=3, version=2, client_id="alice")


def test_uncompressed_update_is_untouched_and_costs_a_dense_payload():
    vector = delta()
    before = vector.copy()
    metrics = encoder()(vector, TASK, None)
    assert np.array_equal(vector, before)
    assert metrics["bytes_up"] == len(wire.serialize_dense(before))


def test_eight_bit_bytes_equal_the_serialized_payload_and_error_is_bounded():
    vector = delta()
    original = vector.copy()
    metrics = encoder(quantize_bits=8, chunk=256)(vector, TASK, None)
    q = quantize(original, bits=8, chunk=256, rng=make_rng(SEED, "quantize", TASK.round, TASK.client_id))
    assert metrics["bytes_up"] == len(wire.serialize_quantized(q))
    # the decoded values are exactly what the server would decode from those codes
    decoded = dequantize(wire.deserialize(wire.serialize_quantized(q))[1]["quantized"])
    np.testing.assert_array_equal(vector, decoded)
    scale = np.abs(original).max()
    assert np.abs(vector - original).max() <= scale / 127 + 1e-6
    # a quarter of float32, plus a scale per chunk and the header
    assert metrics["bytes_up"] == wire.HEADER_BYTES + SIZE + 4 * 4


def test_rotated_four_bit_bytes_count_the_padded_rotation():
    vector = delta()
    original = vector.copy()
    metrics = encoder(quantize_bits=4, chunk=128, rotate=True)(vector, TASK, None)
    rotated = rotate(original, seed=derive_seed(SEED, "rotate", TASK.round, TASK.client_id))
    q = quantize(rotated, bits=4, chunk=128, rng=make_rng(SEED, "quantize", TASK.round, TASK.client_id))
    assert metrics["bytes_up"] == len(wire.serialize_quantized(q))
    assert np.linalg.norm(vector - original) < 0.3 * np.linalg.norm(original)


def test_random_mask_is_shared_by_the_cohort_so_updates_sum_coordinate_wise():
    encode = encoder(sparsify="random", fraction=0.25)
    a, b = delta(1), delta(2)
    total = a + b
    sent_a, sent_b = a.copy(), b.copy()
    meta = encode(sent_a, Task(3, 2, "alice"), None)
    encode(sent_b, Task(3, 2, "bob"), None)
    mask = random_mask(SIZE, fraction=0.25, seed=mask_seed(SEED, 3))
    expected = np.zeros(SIZE, np.float32)
    expected[mask] = total[mask] * np.float32(SIZE / mask.size)
    np.testing.assert_allclose(sent_a + sent_b, expected, rtol=1e-6)
    assert meta["bytes_up"] == len(wire.serialize_sparse(sent_a[mask], None))  # indices come from the seed


def test_top_k_error_feedback_carries_the_residual():
    encode = encoder(sparsify="top_k", fraction=0.1)
    residual = np.zeros(SIZE, np.float32)
    first, second = delta(3), delta(4)
    inputs = first + second
    sent1, sent2 = first.copy(), second.copy()
    m1 = encode(sent1, TASK, residual)
    encode(sent2, Task(4, 3, "alice"), residual)
    # everything not delivered so far is in the residual
    np.testing.assert_allclose(sent1 + sent2 + residual, inputs, atol=1e-5)
    assert np.count_nonzero(sent1) == 100
    kept = top_k(first, fraction=0.1)
    assert m1["bytes_up"] == len(wire.serialize_sparse(first[kept], kept))


def test_top_k_without_a_residual_is_refused():
    with pytest.raises(ValueError, match="residual"):
        encoder(sparsify="top_k", fraction=0.1)(delta(), TASK, None)


def test_top_k_and_quantize_are_refused_with_secure_aggregation():
    for step in (Step("top_k", Stage.SPARSIFY, summable=False), Step("quantize", Stage.QUANTIZE, summable=False)):
        with pytest.raises(PipelineError, match=f"{step.name} needs to see individual updates"):
            check_chain((step, Step("secagg_mask", Stage.MASK), Step("mean", Stage.AGGREGATE)), build_pipeline(
                StrategySettings(), LoraSettings(), SPEC).optimizer)


def test_compression_with_dp_noise_is_refused_naming_both():
    steps = (Step("clip", Stage.CLIP), Step("quantize", Stage.QUANTIZE, summable=False), Step("mean", Stage.AGGREGATE),
             Step("central_noise", Stage.CENTRAL_NOISE))
    with pytest.raises(PipelineError, match="quantize cannot be combined with central_noise"):
        check_chain(steps, build_pipeline(StrategySettings(), LoraSettings(), SPEC).optimizer)
