"""The simulation and `fedlm join` train at the same scheduled rate: both hand run_task the run's length."""

from __future__ import annotations

import numpy as np

from fedlm.client.train import run_task
from fedlm.config import RunConfig, apply_overrides, config_to_dict
from fedlm.core.types import Task

RUN = apply_overrides(RunConfig(), {
    "model": {"name": "tiny"}, "data": {"seq_len": 32}, "federation": {"rounds": 3, "clients_per_round": 2},
    "client": {"local_steps": 2, "batch_size": 2, "lr": 0.05, "lr_schedule": "cosine", "warmup_steps": 1,
               "min_lr_ratio": 0.1, "max_grad_norm": 0.5, "grad_accumulation": 2},
    "eval": {"clients": 2, "max_sequences": 4},
})
ROUND_2 = Task(round=2, version=1, client_id="me")


def direct_update(adapter, blocks, global_vector, *, rounds):
    out = np.empty_like(global_vector)
    run_task(adapter, ROUND_2, global_vector=global_vector, private_vector=adapter.initial_private.copy(),
             train_blocks=blocks, settings=RUN.client, seed=RUN.run.seed, out=out, rounds=rounds)
    return out


def test_the_service_client_trains_round_2_of_the_runs_schedule(tmp_path):
    # Prepare: one client's folder of text, and the run's adapter size as the coordinator announces it.
    from fedlm.assembly import assemble
    from fedlm.service.local_trainer import LocalTrainer

    (tmp_path / "me").mkdir()
    (tmp_path / "me" / "notes.txt").write_text("\n".join(f"line {i} of the ward's notes, written plainly" for i in range(40)))
    size = assemble(RUN, population=10).adapter.shared_spec.size
    served = {"run": config_to_dict(RUN), "update_size": size, "population": 10, "max_upload_bytes": 1 << 24}
    trainer = LocalTrainer.build(served, tmp_path / "me", client_id="me", threads=1)
    global_vector = trainer.parts.adapter.initial_shared.copy()
    # Execute
    vector, _, metrics = trainer.train({"round": 2, "version": 1, "clip_norm": 0.0}, global_vector)
    # Assert: the update run_task makes over federation.rounds = 3, bit for bit, with 2 optimizer steps.
    expected = direct_update(trainer.parts.adapter, trainer.blocks, global_vector, rounds=3)
    assert metrics["steps"] == 2 and np.abs(vector).max() > 0
    np.testing.assert_array_equal(vector, expected)
    assert not np.array_equal(vector, direct_update(trainer.parts.adapter, trainer.blocks, global_vector, rounds=4))


def test_the_simulations_trainer_trains_round_2_of_the_runs_schedule():
    # Prepare
    from fedlm.sim.cohort import NO_PRIVATE, ClientJob
    from fedlm.sim.setup import prepare
    from fedlm.sim.trainers import make_lora_trainer

    sim = prepare(RUN, encode_all=False)
    client = sim.population[0]
    task = Task(round=2, version=1, client_id=client)
    global_vector = sim.adapter.initial_shared.copy()
    blocks = sim.train_blocks(client)
    # Execute
    update = make_lora_trainer(sim)(ClientJob(0, task, NO_PRIVATE), global_vector, np.empty_like(global_vector))
    # Assert: the update run_task makes over federation.rounds = 3.
    expected = np.empty_like(global_vector)
    run_task(sim.adapter, task, global_vector=global_vector, private_vector=NO_PRIVATE, train_blocks=blocks,
             settings=RUN.client, seed=RUN.run.seed, out=expected, rounds=3)
    np.testing.assert_array_equal(update.vector, expected)
