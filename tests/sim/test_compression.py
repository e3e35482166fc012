"""Compressed updates end to end on the tiny model: quality kept, bytes measured."""

from __future__ import annotations

import pytest

from fedlm.config import apply_overrides, config_from_dict
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare
from fedlm.updates import wire


BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 3, "clients_per_round": 3},
    "client": {"local_steps": 3, "batch_size": 2, "lr": 5e-3},
    "eval": {"clients": 2, "max_sequences": 8},
})


def tiny(**sections):
    """The base run with some tables' settings replaced."""
    return apply_overrides(BASE, sections)


def test_eight_bit_updates_match_the_uncompressed_loss_at_a_quarter_of_the_bytes():
    # Prepare / Execute: the same seed, with and without 8-bit quantization
    plain = simulate(prepare(tiny()))
    sim8 = prepare(tiny(compression={"quantize_bits": 8}))
    eight = simulate(sim8)
    # Assert: held-out loss within 1 %, upload about a quarter
    assert eight.final_eval.loss == pytest.approx(plain.final_eval.loss, rel=0.01)
    ratio = eight.records[-1]["bytes_up"] / plain.records[-1]["bytes_up"]
    assert 0.24 < ratio < 0.27
    size = sim8.adapter.shared_spec.size
    assert plain.records[-1]["bytes_up_per_client"] == wire.dense_bytes(size)
    assert eight.records[-1]["bytes_down_per_client"] == wire.dense_bytes(size)


@pytest.mark.parametrize(
    "compression",
    [
        {"quantize_bits": 4, "rotate": True},
        {"sparsify": "random", "fraction": 0.25},
        {"sparsify": "top_k", "fraction": 0.1, "quantize_bits": 8},
    ],
    ids=["4bit-rotated", "random-mask", "top-k+8bit"],
)
def test_each_compression_completes_and_sends_less(compression):
    result = simulate(prepare(tiny(compression=compression)))
    record = result.records[-1]
    assert result.state.version == 3
    assert record["bytes_up_per_client"] < 0.5 * record["bytes_down_per_client"]
    assert 0 < record["up_vs_full_model"] < 1
