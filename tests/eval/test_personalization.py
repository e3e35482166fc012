"""Personalization scored per client on the tiny model: the reference, fine-tuning, Ditto, private parameters."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedlm.client.train import run_task
from fedlm.config import apply_overrides, config_from_dict
from fedlm.core.types import Task
from fedlm.eval.personalization import (
    PersonalSettings,
    evaluate_personalization,
    own_test_sets,
    personal_client_settings,
    summarize,
)
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare

BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 1, "clients_per_round": 2},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
    "eval": {"mode": "held_out", "clients": 2, "max_sequences": 4},
})
SETTINGS = PersonalSettings(steps=2, lr=5e-3, max_sequences=3)


@pytest.fixture(scope="module")
def held_out():
    """Held-out speakers and a global vector away from the initial adapter (LoRA B is zero there): (simulation, global)."""
    sim = prepare(BASE)
    noise = np.random.default_rng(0).normal(0.0, 0.05, sim.adapter.initial_shared.size).astype(np.float32)
    return sim, sim.adapter.initial_shared + noise


@pytest.fixture(scope="module")
def per_site():
    """Three sites whose layer-1 LoRA factors are private, after one round in which all three train."""
    config = apply_overrides(BASE, {"data": {"min_lines": 900}, "eval": {"mode": "per_site"},
                                    "federation": {"clients_per_round": 3}, "lora": {"private": ["*layers.1.*"]}})
    sim = prepare(config)
    private: dict[str, np.ndarray] = {}
    state = simulate(sim, private_state=private).state
    return sim, state.global_vector.copy(), private


def losses(report, method):
    return np.array([report.methods[method].results[c].loss for c in report.clients])


def test_summary_by_hand():
    # Prepare: four clients, losses 1..4 against a global of 2 for each
    method = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    reference = dict.fromkeys(method, 2.0)
    # Execute
    d = summarize(method, reference)
    # Assert: a tie (b) is not worse; p90 interpolates 3 + 0.7 * (4 - 3)
    assert (d.clients, d.mean_loss, d.median_loss, d.share_worse, d.mean_change) == (4, 2.5, 2.5, 0.5, 0.5)
    assert d.p90_loss == pytest.approx(3.7)
    e = math.e
    assert d.mean_perplexity == pytest.approx((e + e**2 + e**3 + e**4) / 4)
    assert d.median_perplexity == pytest.approx((e**2 + e**3) / 2)
    assert d.p90_perplexity == pytest.approx(e**3 + 0.7 * (e**4 - e**3))
    with pytest.raises(ValueError, match="not the same clients"):
        summarize(method, {"a": 2.0})


def test_global_is_the_client_own_text_scored_by_hand(held_out):
    sim, global_vector = held_out
    report = evaluate_personalization(sim, global_vector, methods=("global",), settings=SETTINGS)
    assert report.clients == sim.eval_clients
    sets = own_test_sets(sim, sim.eval_clients, SETTINGS.max_sequences)
    sim.adapter.write_shared(global_vector)
    for client in sim.eval_clients:
        assert report.methods["global"].results[client] == sim.work.evaluate(sim.adapter.model, sets[client])


def test_finetune_with_zero_steps_is_the_global_and_with_steps_is_run_task(held_out):
    sim, global_vector = held_out
    zero = evaluate_personalization(sim, global_vector, methods=("finetune",), settings=PersonalSettings(steps=0))
    assert all(zero.methods["finetune"].results[c] == zero.methods["global"].results[c] for c in zero.clients)
    # With steps: the client's round-1 task of the run's training loop, at the personal settings
    report = evaluate_personalization(sim, global_vector, methods=("finetune",), settings=SETTINGS)
    client = sim.eval_clients[0]
    run_task(sim.adapter, Task(1, 0, client), global_vector=global_vector,
             private_vector=sim.adapter.initial_private.copy(), train_blocks=sim.train_blocks(client),
             settings=personal_client_settings(sim.config.client, SETTINGS), seed=sim.config.run.seed,
             out=np.empty_like(global_vector), loss_fn=sim.work.loss, rounds=1)
    by_hand = sim.work.evaluate(sim.adapter.model, own_test_sets(sim, (client,), SETTINGS.max_sequences)[client])
    assert report.methods["finetune"].results[client] == by_hand
    assert not np.allclose(losses(report, "finetune"), losses(report, "global"))


def test_ditto_spans_finetune_to_the_global(held_out):
    sim, global_vector = held_out
    methods = ("finetune", "ditto")
    free = evaluate_personalization(sim, global_vector, methods=methods,
                                    settings=PersonalSettings(steps=2, lr=5e-3, ditto_lambda=0.0, max_sequences=3))
    held = evaluate_personalization(sim, global_vector, methods=methods,
                                    settings=PersonalSettings(steps=2, lr=5e-3, ditto_lambda=1e9, max_sequences=3))
    # lambda = 0 is plain fine-tuning (same seed, same batches); a huge lambda holds the adapter at the global
    np.testing.assert_allclose(losses(free, "ditto"), losses(free, "finetune"), atol=1e-6, rtol=0)
    np.testing.assert_allclose(losses(held, "ditto"), losses(held, "global"), atol=1e-4, rtol=0)
    assert np.abs(losses(held, "finetune") - losses(held, "global")).max() > 1e-3  # while fine-tuning moves it


def test_adapter_and_random_state_are_left_as_found(held_out):
    sim, global_vector = held_out
    adapter = sim.adapter
    shared = (global_vector + np.float32(0.01)).astype(np.float32)
    adapter.write_shared(shared)
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    evaluate_personalization(sim, global_vector, methods=("finetune", "ditto"), settings=SETTINGS)
    after = adapter.read_shared(np.empty_like(shared))
    assert after.tobytes() == shared.tobytes()
    assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_refusals_leave_the_adapter_unchanged(held_out):
    sim, global_vector = held_out
    adapter = sim.adapter
    adapter.write_shared(global_vector)
    with pytest.raises(ValueError, match="unknown personalization method"):
        evaluate_personalization(sim, global_vector, methods=("maml",))
    with pytest.raises(ValueError, match="lora.private"):
        evaluate_personalization(sim, global_vector, methods=("private",))
    with pytest.raises(ValueError, match="shape"):
        evaluate_personalization(sim, global_vector[:-1])
    assert adapter.read_shared(np.empty_like(global_vector)).tobytes() == global_vector.tobytes()
    with pytest.raises(ValueError, match="steps must be >= 0"):
        PersonalSettings(steps=-1)


def test_private_scores_each_site_with_its_own_private_parameters(per_site):
    # Prepare
    sim, global_vector, private = per_site
    adapter = sim.adapter
    assert set(private) == set(sim.eval_clients) and adapter.private_spec.size > 0
    marker = (adapter.initial_private + np.float32(0.5)).astype(np.float32)
    adapter.write_private(marker)
    # Execute
    report = evaluate_personalization(sim, global_vector, methods=("private",), private_state=private, settings=SETTINGS)
    # Assert: the private vector read back is the one written before
    assert adapter.read_private(np.empty_like(marker)).tobytes() == marker.tobytes()
    assert report.methods["private"].fallback == ()
    sets = own_test_sets(sim, sim.eval_clients, SETTINGS.max_sequences)
    adapter.write_shared(global_vector)
    for site in sim.eval_clients:
        adapter.write_private(private[site])
        assert report.methods["private"].results[site] == sim.work.evaluate(adapter.model, sets[site])
        adapter.write_private(adapter.initial_private)
        assert report.methods["global"].results[site] == sim.work.evaluate(adapter.model, sets[site])
    assert not np.allclose(losses(report, "private"), losses(report, "global"))
    # A site with no private parameters of its own is scored with the initial ones, and named
    partial = {site: private[site] for site in sim.eval_clients[1:]}
    fallback = evaluate_personalization(sim, global_vector, methods=("private",), private_state=partial, settings=SETTINGS)
    first = sim.eval_clients[0]
    assert fallback.methods["private"].fallback == (first,)
    assert fallback.methods["private"].results[first] == fallback.methods["global"].results[first]


def test_private_refused_outside_per_site_or_without_the_sites_state(per_site):
    sim, global_vector, private = per_site
    held_out_view = dataclasses.replace(sim, eval_mode="held_out")
    with pytest.raises(ValueError, match="eval.mode = 'per_site'"):
        evaluate_personalization(held_out_view, global_vector, methods=("private",), private_state=private)
    with pytest.raises(ValueError, match="simulate\\(sim, private_state"):
        evaluate_personalization(sim, global_vector, methods=("private",))
