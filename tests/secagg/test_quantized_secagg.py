"""SecAgg over codes on the cohort's shared grid: the unmasked sum is the sum of the codes, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.config import CompressionSettings, LoraSettings, SecAggSettings, StrategySettings
from fedlm.core.rng import make_rng
from fedlm.core.vectors import make_spec
from fedlm.secagg.encoding import FixedPoint
from fedlm.secagg.graph import effective_degree, threshold_for
from fedlm.secagg.server import SecAggServer
from fedlm.secagg.session import run_round
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import secagg_grid
from fedlm.updates.clip import clip_in_place
from fedlm.updates.dp_quantize import quantize_shared
from fedlm.updates.quantize import unpacked_codes

SIZE = 400
CLIP = 0.5


def grid_for(size: int = SIZE):
    spec = make_spec([("m.lora_A.w", (size,))])
    pipeline = build_pipeline(StrategySettings(clip_norm=CLIP, weighting="uniform"), LoraSettings(), spec, None,
                              CompressionSettings(quantize_bits=8), SecAggSettings(enabled=True))
    return secagg_grid(pipeline, clip_norm=CLIP, size=size)


def noisy_quantized(n: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each client's (decoded update, int64 codes): update + Gaussian noise, clipped, rounded on the shared grid."""
    grid, rng = grid_for(), np.random.default_rng(seed)
    inputs = {}
    for i in range(n):
        vector = (rng.normal(0, 0.02, SIZE) + rng.normal(0, 0.05, SIZE)).astype(np.float32)  # update + noise
        clip_in_place(vector, CLIP)
        q, decoded = quantize_shared(vector, grid, make_rng(seed, "round", i))
        inputs[f"client-{i:03d}"] = (decoded, unpacked_codes(q).astype(np.int64))
    return inputs


def secure_sum(inputs, *, drop=None):
    grid = grid_for()
    degree = effective_degree(0, len(inputs))
    encoding = FixedPoint(float(grid.scale), len(inputs), float(grid.step))
    server = SecAggServer(1, list(inputs), size=SIZE, degree=degree, threshold=threshold_for(degree, 0.5),
                          encoding=encoding, rng=np.random.default_rng(1))

    def source(client, out):
        out[:] = inputs[client][0]
        return True

    return run_round(server, source, lambda c: np.random.default_rng(0), drop=drop)


@pytest.mark.parametrize("n", [3, 10])
def test_the_sum_of_quantized_noisy_updates_decodes_exactly(n):
    # Prepare
    inputs = noisy_quantized(n)
    step = float(grid_for().step)
    # Execute
    result = secure_sum(inputs)
    # Assert: bit for bit the integer sum of the codes times the step, and the float sum of the decoded updates
    codes = sum(c for _, c in inputs.values())
    np.testing.assert_array_equal(result.total, (codes * step).astype(np.float32))
    # (each decoded float32 value is within 2^-24 relative of code * step, and |code * step| <= the grid's scale)
    plain = sum(d.astype(np.float64) for d, _ in inputs.values())
    np.testing.assert_allclose(result.total, plain, rtol=0, atol=n * float(grid_for().scale) * 2**-23)
    assert result.survivors == tuple(sorted(inputs))


def test_a_dropped_client_leaves_the_exact_sum_of_the_others():
    # Prepare: one client falls silent before masking
    inputs = noisy_quantized(6, seed=2)
    gone = "client-002"
    # Execute
    result = secure_sum(inputs, drop={gone: "mask"})
    # Assert
    codes = sum(c for name, (_, c) in inputs.items() if name != gone)
    np.testing.assert_array_equal(result.total, (codes * float(grid_for().step)).astype(np.float32))
    assert gone in result.dropped


def test_grid_encoding_sends_the_codes_themselves():
    # Prepare
    decoded, codes = next(iter(noisy_quantized(1).values()))
    grid = grid_for()
    encoding = FixedPoint(float(grid.scale), 1, float(grid.step))
    # Execute
    encoded = encoding.encode(decoded, np.random.default_rng(0), np.empty(SIZE, np.uint32))
    # Assert: the codes in two's complement; nothing added, so the update's norm is the quantizer's
    np.testing.assert_array_equal(encoded.view(np.int32), codes)


def test_a_grid_too_fine_for_32_bits_is_refused():
    with pytest.raises(ValueError, match="overflow 32 bits"):
        FixedPoint(1.0, 1000, 1e-7)
