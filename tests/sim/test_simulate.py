"""End-to-end simulation on the tiny model: determinism, the exported adapter, private parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from fedlm.config import apply_overrides, config_from_dict
from fedlm.eval.metrics import evaluate
from fedlm.models.base import load_base_model
from fedlm.sim import engine
from fedlm.sim.engine import simulate
from fedlm.sim.rundir import read_metrics
from fedlm.sim.run import run_simulation
from fedlm.sim.setup import build_eval_set, load_dataset, prepare, split_population
from fedlm.work import make_work


BASE = config_from_dict({
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "federation": {"rounds": 2, "clients_per_round": 3},
    "client": {"local_steps": 3, "batch_size": 2, "lr": 5e-3},
    "eval": {"clients": 2, "max_sequences": 8},
})


def tiny_config(**sections):
    """The base run with some tables' settings replaced."""
    return apply_overrides(BASE, sections)


def test_run_writes_run_directory_and_learns(tmp_path):
    # Execute
    summary = run_simulation(tiny_config(), tmp_path / "run")
    # Assert
    run = tmp_path / "run"
    records = read_metrics(run)
    assert [r["round"] for r in records] == [1, 2]
    assert [r["version"] for r in records] == [1, 2]
    assert all(r["accepted"] == 3 and r["cohort"] == 3 for r in records)
    assert summary["status"] == "completed" and summary["version"] == 2
    assert summary["final"]["perplexity"] == pytest.approx(records[-1]["eval"]["perplexity"])
    assert summary["final"]["loss"] < summary["base"]["loss"]
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (run / "config.toml").is_file()
    assert {p.name for p in (run / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    # bytes on the wire: a 16-byte header and 4 bytes per float, one vector per cohort client each way
    assert records[0]["bytes_up"] == records[0]["bytes_down"] == 3 * (16 + summary["update_bytes"])


def test_same_seed_gives_identical_results_and_another_seed_does_not():
    # Prepare
    runs = [simulate(prepare(tiny_config(run={"seed": s}))) for s in (7, 7, 8)]
    # Execute
    vectors = [r.state.global_vector for r in runs]
    losses = [[rec["eval"]["loss"] for rec in r.records] for r in runs]
    # Assert
    assert vectors[0].tobytes() == vectors[1].tobytes()
    assert losses[0] == losses[1]
    assert not np.array_equal(vectors[0], vectors[2])


def test_exported_adapter_loads_with_peft_and_gives_reported_perplexity(tmp_path):
    # Prepare
    config = tiny_config()
    summary = run_simulation(config, tmp_path / "run")
    # Execute: a fresh process would do exactly this, knowing only the run directory.
    base = AutoModelForCausalLM.from_pretrained(summary["base_model_dir"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    tokenizer_owner = load_base_model("tiny")
    dataset = load_dataset(config)
    _, eval_clients = split_population(dataset, config)
    blocks = build_eval_set(make_work(config), tokenizer_owner.tokenizer, dataset, eval_clients, config).blocks
    result = evaluate(model, blocks, batch_size=config.eval.batch_size)
    # Assert
    assert result.tokens == summary["final"]["tokens"]
    assert result.perplexity == pytest.approx(summary["final"]["perplexity"], rel=1e-5)
    assert result.perplexity != pytest.approx(summary["base"]["perplexity"], rel=1e-3)


def test_private_parameters_never_enter_an_update(monkeypatch):
    # Prepare: layer 1's LoRA factors are private to each client.
    sim = prepare(tiny_config(lora={"private": ["*layers.1.*"]}))
    shared_names, private_names = set(sim.adapter.shared_spec.names), set(sim.adapter.private_spec.names)
    seen = []
    real_accept = engine.accept_update

    def spy(rnd, update):
        seen.append((update.client_id, update.vector.copy()))
        real_accept(rnd, update)

    monkeypatch.setattr(engine, "accept_update", spy)
    private_state: dict[str, np.ndarray] = {}
    # Execute
    result = simulate(sim, private_state=private_state)
    # Assert: the update is exactly the shared layout, and nothing of layer 1 is in it.
    assert private_names and all("layers.1." in n for n in private_names)
    assert not any("layers.1." in n for n in shared_names)
    assert len(seen) == 6
    assert all(v.size == sim.adapter.shared_spec.size for _, v in seen)
    assert result.state.global_vector.size == sim.adapter.shared_spec.size
    # The private parameters did train, each client its own, and stayed in client-side state.
    assert set(private_state) == {c for c, _ in seen}
    vectors = list(private_state.values())
    assert all(not np.array_equal(v, sim.adapter.initial_private) for v in vectors)
    assert not np.array_equal(vectors[0], vectors[1])


def test_private_parameters_train_locally_and_stay_out_of_the_export(tmp_path):
    # Prepare
    config = tiny_config(lora={"private": ["*lora_B*"]})
    # Execute
    summary = run_simulation(config, tmp_path / "run")
    sim = prepare(config)
    exported = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    # Assert: every exported lora_B (private) equals its initial value (zeros for LoRA B).
    b_keys = [k for k in exported if "lora_B" in k]
    assert b_keys and all(np.all(exported[k] == 0) for k in b_keys)
    assert summary["update_size"] == sim.adapter.shared_spec.size
