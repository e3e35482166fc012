"""Every server optimizer, LoRA mode and robust aggregator runs end to end on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import LoraSettings, StrategySettings, apply_overrides, config_from_dict
from fedlm.core.types import Update
from fedlm.core.vectors import make_spec
from fedlm.server.rounds import UpdateRejected, accept_update, close_round, initial_state, open_round
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare
from fedlm.updates.build import build_pipeline


BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 2, "clients_per_round": 3},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "eval": {"clients": 2, "max_sequences": 4},
})


def tiny(**sections):
    """The base run with some tables' settings replaced."""
    return apply_overrides(BASE, sections)


@pytest.mark.parametrize(
    "strategy",
    [
        {"server_optimizer": "sgd", "server_momentum": 0.9},
        {"server_optimizer": "adam", "server_lr": 0.01},
        {"server_optimizer": "yogi", "server_lr": 0.01},
        {"server_optimizer": "adagrad", "server_lr": 0.01},
        {"aggregator": "median"},
        {"aggregator": "trimmed_mean", "trim_fraction": 0.2},
        {"aggregator": "multi_krum", "federation_cohort": 5, "num_byzantine": 1},
        {"clip_norm": 0.01, "norm_bound": 0.005},
    ],
    ids=["fedavgm", "adam", "yogi", "adagrad", "median", "trimmed_mean", "multi_krum", "clip+bound"],
)
def test_each_strategy_completes_and_moves_the_global(strategy):
    cohort = strategy.pop("federation_cohort", 3)
    sim = prepare(tiny(strategy=strategy, federation={"clients_per_round": cohort}))
    result = simulate(sim)
    assert result.state.version == 2
    assert np.isfinite(result.state.global_vector).all()
    assert not np.array_equal(result.state.global_vector, sim.adapter.initial_shared)
    assert all(r["accepted"] == cohort for r in result.records)


def test_clip_and_norm_bound_limit_each_round_step():
    # With every update clipped to 0.01, the mean (a convex combination) moves the global by <= 0.01.
    sim = prepare(tiny(strategy={"clip_norm": 0.01}, federation={"rounds": 1}))
    result = simulate(sim)
    step = np.linalg.norm(result.state.global_vector - sim.adapter.initial_shared)
    assert 0 < step <= 0.01 + 1e-6


def test_ffa_trains_and_sends_only_b_and_keeps_a_fixed():
    sim = prepare(tiny(lora={"aggregation": "ffa"}))
    a_params = [p for n, p in sim.adapter.model.named_parameters() if "lora_A" in n]
    a_before = [p.detach().clone() for p in a_params]
    result = simulate(sim)
    assert all("lora_B" in n for n in sim.adapter.shared_spec.names)
    assert all(not p.requires_grad for p in a_params)
    assert all(np.array_equal(p.detach().numpy(), b.numpy()) for p, b in zip(a_params, a_before, strict=True))
    assert result.state.version == 2


def test_svd_mode_with_heterogeneous_client_ranks_completes():
    sim = prepare(tiny(lora={"aggregation": "svd", "r": 4, "client_ranks": [1, 2, 4]}))
    result = simulate(sim)
    assert result.state.version == 2 and np.isfinite(result.state.global_vector).all()
    assert result.final_eval.loss < result.base_eval.loss + 0.5


def test_fedprox_keeps_the_update_closer_to_the_global():
    plain = simulate(prepare(tiny(federation={"rounds": 1}, client={"local_steps": 6})))
    prox = simulate(prepare(tiny(federation={"rounds": 1}, client={"local_steps": 6, "prox_mu": 50.0})))
    start = prepare(tiny()).adapter.initial_shared
    assert np.linalg.norm(prox.state.global_vector - start) < np.linalg.norm(plain.state.global_vector - start)


def test_median_round_ignores_a_planted_poisoned_update():
    # Prepare: 4 honest updates near 1.0 and one poisoned update of 1e6.
    spec = make_spec([("w", (3,))])
    pipeline = build_pipeline(StrategySettings(aggregator="median"), LoraSettings(), spec)
    state = initial_state(np.zeros(3, np.float32), pipeline)
    clients = ("a", "b", "c", "d", "evil")
    rnd = open_round(state, clients, pipeline)
    for i, c in enumerate(clients):
        vector = np.full(3, 1e6 if c == "evil" else 1.0 + 0.1 * i, np.float32)
        accept_update(rnd, Update(rnd.round, rnd.version, c, 10, vector))
    # Execute
    new_state, _ = close_round(state, rnd)
    # Assert: the median of [1.0, 1.1, 1.2, 1.3, 1e6] is 1.2
    np.testing.assert_allclose(new_state.global_vector, [1.2, 1.2, 1.2], rtol=1e-6)


def test_cli_refuses_an_impossible_combination_before_loading_anything(tmp_path):
    result = CliRunner().invoke(app, [
        "simulate", "--model", "tiny", "--quiet", "--out", str(tmp_path / "run"),
        "--set", "lora.aggregation=svd", "--set", "strategy.server_optimizer=adam",
    ])
    assert result.exit_code == 2
    assert "svd" in result.output and "adam" in result.output
    assert not (tmp_path / "run").exists()


def test_rejected_update_leaves_a_robust_round_and_its_stack_unchanged():
    # Prepare: a median round holding one accepted row
    spec = make_spec([("w", (3,))])
    pipeline = build_pipeline(StrategySettings(aggregator="median"), LoraSettings(), spec)
    state = initial_state(np.zeros(3, np.float32), pipeline)
    rnd = open_round(state, ("a", "b", "c"), pipeline)
    accept_update(rnd, Update(rnd.round, rnd.version, "a", 5, np.ones(3, np.float32)))
    before = (rnd.stack.tobytes(), dict(rnd.weights), rnd.total.tobytes())
    # Execute: a NaN update and a replay are refused
    for bad in (Update(rnd.round, rnd.version, "b", 5, np.array([1, np.nan, 0], np.float32)),
                Update(rnd.round, rnd.version, "a", 5, np.ones(3, np.float32))):
        with pytest.raises(UpdateRejected):
            accept_update(rnd, bad)
    # Assert
    assert (rnd.stack.tobytes(), dict(rnd.weights), rnd.total.tobytes()) == before


def test_krum_cohort_too_small_is_refused_before_training():
    with pytest.raises(ValueError, match="at least 5"):
        prepare(tiny(strategy={"aggregator": "krum", "num_byzantine": 1}))
