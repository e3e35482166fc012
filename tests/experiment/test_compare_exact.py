"""The engine adds nothing to training: one client with all the data, one FedAvg round at server lr 1, is centralized training."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedlm.config import RunConfig
from fedlm.data.blocks import concat_blocks
from fedlm.experiment.compare import choose_training_clients, fedavg_config, plain_config
from fedlm.experiment.methods import federated_simulation, train_centralized
from fedlm.experiment.settings import make_settings, resolve
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare


def test_one_round_of_fedavg_on_one_client_equals_centralized_training():
    # Prepare: the tiny model; the federation is one client, which so holds all the training data.
    config, _ = resolve(RunConfig(), {"client": {"lr": 1e-2}}, quick=True)
    settings = make_settings({"train_clients": 1, "rounds": 1, "clients_per_round": 1, "local_steps": 5})
    sim = prepare(plain_config(config))
    (client,) = choose_training_clients(sim, 1, config.run.seed)
    fed = fedavg_config(config, settings)
    assert fed.strategy.server_optimizer == "sgd" and fed.strategy.server_lr == 1.0 and fed.strategy.server_momentum == 0
    union = concat_blocks([sim.train_blocks(client)], config.data.seq_len)
    assert len(union) > config.client.batch_size  # batches are a real choice among blocks
    # Execute: FedAvg through the engine, then centralized training with the same steps, batches and seed.
    federated = simulate(federated_simulation(sim, fed, (client,))).state.global_vector
    steps = dataclasses.replace(config.client, local_steps=settings.local_steps)
    result = train_centralized(sim.adapter, union, steps, seed=config.run.seed, name=client)
    centralized = sim.adapter.read_shared(np.empty_like(federated))
    # Assert: the same adapter to float tolerance, and one that moved far beyond that tolerance.
    assert result.steps == 5
    np.testing.assert_allclose(federated, centralized, rtol=0, atol=1e-6)
    assert np.abs(centralized - sim.adapter.initial_shared).max() > 1e-2


def test_centralized_training_under_another_seed_gives_another_adapter():
    # Prepare
    config, _ = resolve(RunConfig(), {}, quick=True)
    sim = prepare(plain_config(config))
    (client,) = choose_training_clients(sim, 1, config.run.seed)
    blocks = sim.train_blocks(client)
    steps = dataclasses.replace(config.client, local_steps=3)
    # Execute
    vectors = []
    for seed in (0, 0, 1):
        train_centralized(sim.adapter, blocks, steps, seed=seed, name=client)
        vectors.append(sim.adapter.read_shared(np.empty_like(sim.adapter.initial_shared)))
    # Assert: the seed fixes the batches, so the comparison above is not equal by accident.
    assert vectors[0].tobytes() == vectors[1].tobytes()
    assert not np.array_equal(vectors[0], vectors[2])
