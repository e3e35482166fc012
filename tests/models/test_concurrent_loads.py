"""Threads of one process building the model at once get the same weights as one build alone.

transformers' from_pretrained patches torch.nn.init process-wide while it loads; unguarded, a
LoRA layer initialised meanwhile in another thread kept uninitialised memory, and two
in-process `fedlm join` clients reported NaN losses.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from fedlm.assembly import assemble_model
from fedlm.config import RunConfig, apply_overrides

RUN = apply_overrides(RunConfig(), {"model": {"name": "tiny"}})


def test_models_and_adapters_built_in_threads_match_one_built_alone():
    # Prepare: the reference build (this also writes the tiny model's cache)
    _, base, adapter = assemble_model(RUN)
    weights, lora = base.model.state_dict(), adapter.initial_shared.copy()
    built: list = [None] * 4
    # Execute: four builds at once
    threads = [threading.Thread(target=lambda i=i: built.__setitem__(i, assemble_model(RUN))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # Assert: every build's base weights and adapter initialisation equal the lone build's
    for _, other_base, other_adapter in built:
        state = other_base.model.state_dict()
        assert all(torch.equal(state[k], weights[k]) for k in weights)
        np.testing.assert_array_equal(other_adapter.initial_shared, lora)
