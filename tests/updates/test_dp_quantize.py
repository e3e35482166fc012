"""The DP-safe quantizer: Theorem 1's bound by hand, never past the clip norm, unbiased, re-draws, one grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedlm.config import CompressionSettings, FederationSettings, LoraSettings, PrivacySettings, StrategySettings
from fedlm.core.rng import make_rng
from fedlm.core.types import Task
from fedlm.core.vectors import make_spec
from fedlm.privacy.plan import make_privacy_plan
from fedlm.updates import wire
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import compression_of, decode_payload, make_wire_encoder
from fedlm.updates.dp_quantize import (
    FLOAT_MARGIN, SharedGrid, quantize_shared, rounding_norm, sensitivity_bound,
)
from fedlm.updates.quantize import dequantize, unpacked_codes

SEED = 5
CLIP = 0.1


def dp_pipeline(size: int, **compression):
    """Central DP-FedAvg with the given compression over an update of `size` values."""
    spec = make_spec([("m.lora_A.w", (size,))])
    plan = make_privacy_plan(PrivacySettings(noise_multiplier=1.0), FederationSettings(clients_per_round=4), 100)
    strategy = StrategySettings(clip_norm=CLIP, weighting="uniform")
    return build_pipeline(strategy, LoraSettings(), spec, plan, CompressionSettings(**compression))


def test_rounding_norm_inverts_theorem_1_on_a_case_worked_by_hand():
    # Prepare: C = 1, step 0.1, d = 4, beta = e^-1/2 so sqrt(2 log(1/beta)) = 1
    beta = math.exp(-0.5)
    # Execute
    c = rounding_norm(1.0, step=0.1, count=4, beta=beta)
    # Assert: c^2 + 0.1 c + (0.01 + 0.01 - 1) = 0  ->  c = (-0.1 + sqrt(0.01 + 3.92)) / 2 = 0.941213...
    assert c == pytest.approx((-0.1 + math.sqrt(3.93)) / 2, rel=1e-12)
    assert sensitivity_bound(c, step=0.1, count=4, beta=beta) == pytest.approx(1.0, rel=1e-12)
    # the deterministic bound c + step sqrt(d) = 0.8 + 0.2 wins when it is the larger c
    assert rounding_norm(1.0, step=0.1, count=4, beta=1e-300) == pytest.approx(0.8, rel=1e-12)
    # and c never comes closer to C than the float margin
    assert rounding_norm(1.0, step=1e-9, count=4) == pytest.approx(1 - FLOAT_MARGIN)


def test_no_encoding_ever_leaves_the_clip_norm_over_600_seeds():
    # Prepare: random sizes, directions and norms from half to five times the clip norm, and exactly at it
    rng = np.random.default_rng(0)
    worst = 0.0
    for seed in range(600):
        size, bits, rotate = int(rng.integers(1, 3000)), (8, 4)[seed % 2], bool(seed % 3 == 0)
        pipeline = dp_pipeline(size, quantize_bits=bits, rotate=rotate)
        vector = rng.standard_t(df=3, size=size).astype(np.float32)  # heavy tails: some coordinates off the grid
        norm = CLIP if seed % 5 == 0 else CLIP * rng.uniform(0.5, 5.0)
        vector *= np.float32(norm / np.linalg.norm(vector))
        task = Task(round=seed, version=0, client_id=f"c{seed}", clip_norm=CLIP)
        # Execute: clip + quantize on the client, then decode the wire payload as the server does
        _, payload = make_wire_encoder(pipeline, seed=seed)(vector, task, None)
        decoded = decode_payload(payload, compression=compression_of(pipeline), seed=seed, task=task, size=size)
        # Assert: the decoded update is what the client kept, and its norm is within C exactly, no slack
        np.testing.assert_array_equal(decoded, vector)
        worst = max(worst, float(np.linalg.norm(decoded.astype(np.float64))) / CLIP)
        assert worst <= 1.0, f"seed {seed}: norm {worst} x the clip norm"
    assert worst > 0.99  # the bound is reached closely, not by shrinking everything


@pytest.mark.parametrize("norm", [0.5 * CLIP, CLIP])
def test_encodings_are_unbiased_around_the_vector_the_grid_rounds(norm):
    # Prepare: one clipped update of 256 values; 500 independent roundings on the 8-bit grid
    grid = SharedGrid(8, CLIP, 256, 6.0)
    x = np.random.default_rng(1).normal(size=256)
    x *= norm / np.linalg.norm(x)
    draws = 500
    # Execute
    mean = sum(quantize_shared(x.astype(np.float32), grid, make_rng(SEED, "draw", i))[1].astype(np.float64)
               for i in range(draws)) / draws
    # Assert: within 5 standard errors of the (scaled-down, if at the bound) vector; one draw's error per
    # coordinate is at most step / 2 in standard deviation, so the mean's is step / (2 sqrt(draws))
    target = x * min(1.0, grid.rounding_norm / norm)
    tolerance = 5 * float(grid.step) / (2 * math.sqrt(draws))
    assert np.abs(mean - target).max() <= tolerance
    # and the scaling down at the bound costs about 0.6 % here: (step^2 d / 4 + 3.72 step C) / (2 C^2), with
    # step = 6 C / (127 sqrt(256)); the share falls as 1 / sqrt(d), about 0.05 % for the tiny model's 3,584 values
    assert 0.99 * CLIP <= grid.rounding_norm <= 0.995 * CLIP


def test_a_draw_past_the_clip_norm_is_drawn_again():
    # Prepare: a decoder that blows up the first draw (a test double for an unlucky rounding)
    grid = SharedGrid(8, CLIP, 64, 6.0)
    x = np.full(64, CLIP / 8, np.float32)  # norm exactly C
    calls = []

    def decode(q):
        calls.append(q)
        return dequantize(q) * np.float32(10.0 if len(calls) == 1 else 1.0)

    # Execute
    q, decoded = quantize_shared(x, grid, make_rng(SEED, "x"), decode=decode)
    # Assert: the second draw, within the bound, is the one kept
    assert len(calls) == 2 and q is calls[1]
    assert np.linalg.norm(decoded.astype(np.float64)) <= CLIP


def test_without_draws_left_the_rounding_goes_toward_zero():
    # Prepare
    grid = SharedGrid(8, CLIP, 64, 6.0)
    x = np.random.default_rng(2).normal(size=64).astype(np.float32)
    x *= np.float32(CLIP / np.linalg.norm(x))
    # Execute: every draw refused
    q, decoded = quantize_shared(x, grid, make_rng(SEED, "x"), retries=0)
    # Assert: codes are the scaled-down values truncated, no magnitude grows, the norm is within C
    units = x.astype(np.float64) * (grid.rounding_norm / np.linalg.norm(x.astype(np.float64))) / float(grid.step)
    np.testing.assert_array_equal(unpacked_codes(q), np.trunc(units))
    assert np.all(np.abs(decoded) <= np.abs(x)) and np.linalg.norm(decoded.astype(np.float64)) <= CLIP


def test_the_grid_depends_on_the_round_not_on_the_update():
    # Prepare: two clients, very different updates, same round
    pipeline = dp_pipeline(500, quantize_bits=8)
    encode = make_wire_encoder(pipeline, seed=SEED)
    a = np.random.default_rng(3).normal(size=500).astype(np.float32)
    b = a * np.float32(1e-3)
    # Execute
    _, pa = encode(a, Task(1, 0, "a", clip_norm=CLIP), None)
    _, pb = encode(b, Task(1, 0, "b", clip_norm=CLIP), None)
    # Assert: one scale, the grid's, for both: 6 C / sqrt(500); codes on one grid sum as integers
    qa, qb = (wire.deserialize(p)[1]["quantized"] for p in (pa, pb))
    assert qa.scales.tolist() == qb.scales.tolist() == [np.float32(6 * CLIP / math.sqrt(500))]
    total = dequantize(qa).astype(np.float64) + dequantize(qb)
    codes = unpacked_codes(qa).astype(np.int64) + unpacked_codes(qb)
    np.testing.assert_allclose(total, codes * float(SharedGrid(8, CLIP, 500, 6.0).step), rtol=1e-6)
    # and a quarter of dense: one byte a value, one scale, the header
    assert len(pa) == wire.HEADER_BYTES + 4 + 500


def test_the_server_refuses_a_payload_off_the_shared_grid():
    # Prepare: an honest payload, then the same codes with a scale ten times larger
    pipeline = dp_pipeline(100, quantize_bits=8)
    task = Task(1, 0, "a", clip_norm=CLIP)
    _, payload = make_wire_encoder(pipeline, seed=SEED)(np.ones(100, np.float32), task, None)
    scale = np.frombuffer(payload, np.float32, 1, wire.HEADER_BYTES)[0]
    forged = payload[:wire.HEADER_BYTES] + np.float32(10 * scale).tobytes() + payload[wire.HEADER_BYTES + 4:]
    compression = compression_of(pipeline)
    # Execute / Assert
    with pytest.raises(ValueError, match="shared grid of scale"):
        decode_payload(forged, compression=compression, seed=SEED, task=task, size=100)
    with pytest.raises(ValueError, match="round's clip norm"):
        decode_payload(payload, compression=compression, seed=SEED, task=Task(1, 0, "a"), size=100)


def test_a_grid_too_coarse_for_its_clip_norm_is_refused():
    # 4 bits covering 20 x C / sqrt(1): one step alone is past the clip norm
    with pytest.raises(ValueError, match="too coarse"):
        SharedGrid(4, CLIP, 1, 20.0)
