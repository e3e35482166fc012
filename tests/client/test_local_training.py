"""The local training loop on the tiny model: the default update bit for bit equal to the old loop's, accumulation,
gradient clipping and the schedule reaching the optimizer, and a refused task leaving state alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlm.client.train import make_optimizer, mask_hook, prox_hook, run_task
from fedlm.config import ClientSettings, LoraSettings
from fedlm.core.types import Task
from fedlm.core.rng import derive_seed, make_rng
from fedlm.data.blocks import batch_order, pack_texts
from fedlm.models.base import load_base_model
from fedlm.models.lora import attach_lora, rank_masks
from fedlm.work.language_model import batch_loss

LINES = ["To be, or not to be, that is the question", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune", "Or to take arms against a sea of troubles"]


@pytest.fixture(scope="module")
def blocks():
    """22 blocks of 8 tokens; all but the last fully labelled."""
    return pack_texts(load_base_model("tiny").tokenizer, LINES, 8)


def train_update(blocks, *, task=Task(round=3, version=2, client_id="c"), rank=None, rounds=None, on_step=None,
                 **settings):
    """One client's update from a fresh tiny model and adapter; returns (vector, metrics)."""
    adapter = attach_lora(load_base_model("tiny"), LoraSettings(), seed=0)
    out = np.empty_like(adapter.initial_shared)
    update = run_task(adapter, task, global_vector=adapter.initial_shared, private_vector=adapter.initial_private.copy(),
                      train_blocks=blocks, settings=ClientSettings(**settings), seed=0, out=out, rank=rank,
                      rounds=rounds, on_step=on_step)
    return out, dict(update.metrics)


def reference_update(blocks, *, task=Task(round=3, version=2, client_id="c"), rank=None, **settings):
    """The local loop as it was before the schedule, gradient clipping and accumulation existed: one backward per
    batch, the gradient hooks (FedProx, rank masks), one optimizer step at the fixed rate. Same seeds as run_task."""
    settings = ClientSettings(**settings)
    adapter = attach_lora(load_base_model("tiny"), LoraSettings(), seed=0)
    start = adapter.initial_shared.copy()
    adapter.write_shared(start)
    adapter.write_private(adapter.initial_private.copy())
    hooks = [prox_hook(adapter, start, settings.prox_mu)] if settings.prox_mu > 0 else []
    if rank is not None:
        masks = rank_masks(adapter, rank)
        with torch.no_grad():
            for param, mask in masks:
                param.mul_(mask)
        hooks.append(mask_hook(masks))
    order = batch_order(len(blocks), steps=settings.local_steps, batch_size=settings.batch_size,
                        rng=make_rng(0, "batches", task.round, task.client_id))
    torch.manual_seed(derive_seed(0, "dropout", task.round, task.client_id))
    optimizer = make_optimizer(adapter.trainable, settings)
    adapter.model.train()
    losses = []
    for rows in order:
        loss = batch_loss(adapter.model, blocks.take(rows))
        loss.backward()
        losses.append(loss.item())
        for hook in hooks:
            hook()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out = np.empty_like(start)
    adapter.read_shared(out)
    return out - start, losses


def test_the_default_loop_gives_the_update_the_loop_gave_before_the_schedule_clipping_and_accumulation():
    # Prepare: the reference is the loop before these settings existed, run here (bit-for-bit figures depend on the
    # machine's kernels and library versions, so a stored checksum cannot be compared across machines)
    blocks = pack_texts(load_base_model("tiny").tokenizer, LINES, 8)
    sgd_settings = {"local_steps": 3, "batch_size": 2, "optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "prox_mu": 0.1}
    # Execute
    adamw, adamw_metrics = train_update(blocks, local_steps=3, batch_size=2)
    sgd, _ = train_update(blocks, rank=4, **sgd_settings)
    adamw_reference, losses = reference_update(blocks, local_steps=3, batch_size=2)
    sgd_reference, _ = reference_update(blocks, rank=4, **sgd_settings)
    # Assert: bit for bit, with FedProx and rank masks (the gradient hooks) in the second; the update moved
    assert adamw.tobytes() == adamw_reference.tobytes() and np.abs(adamw).max() > 0
    assert sgd.tobytes() == sgd_reference.tobytes() and np.abs(sgd).max() > 0
    assert adamw_metrics == {"train_loss": float(np.mean(losses)), "last_loss": losses[-1], "steps": 3, "tokens": 42}


def test_two_accumulated_batches_of_two_make_the_step_of_one_batch_of_four(blocks):
    # Prepare: four full blocks of equal length, so the mean of two batch means is the mean over four sequences.
    four = blocks.head(4)
    for optimizer in ("sgd", "adamw"):
        # Execute: one optimizer step each; the seeded order deals the same four blocks either way.
        accumulated, acc_metrics = train_update(four, local_steps=1, batch_size=2, grad_accumulation=2,
                                                optimizer=optimizer, lr=0.05)
        whole, whole_metrics = train_update(four, local_steps=1, batch_size=4, optimizer=optimizer, lr=0.05)
        # Assert
        assert np.abs(whole).max() > 1e-4
        np.testing.assert_allclose(accumulated, whole, rtol=1e-5, atol=1e-7)
        assert acc_metrics["train_loss"] == pytest.approx(whole_metrics["train_loss"], rel=1e-6)
        assert acc_metrics["tokens"] == whole_metrics["tokens"] == 32


def test_local_steps_count_optimizer_steps_and_every_micro_batch_is_trained_on(blocks):
    # Prepare
    seen = []
    # Execute: 2 steps of 3 micro-batches of 2 full blocks.
    _, metrics = train_update(blocks.head(21), local_steps=2, batch_size=2, grad_accumulation=3,
                              on_step=lambda step, loss: seen.append(step))
    # Assert: 2 steps reported, 12 sequences of 8 tokens trained on.
    assert seen == [0, 1] and metrics["steps"] == 2 and metrics["tokens"] == 12 * 8


def test_a_clipped_sgd_step_moves_the_adapter_by_lr_times_the_clip_norm_in_the_unclipped_direction(blocks):
    # Prepare: plain SGD, one step; with LoRA B at zero only B has a gradient, and every trainable parameter is shared.
    lr, clip = 0.1, 1e-4
    # Execute
    unclipped, _ = train_update(blocks, local_steps=1, batch_size=4, optimizer="sgd", lr=lr)
    clipped, _ = train_update(blocks, local_steps=1, batch_size=4, optimizer="sgd", lr=lr, max_grad_norm=clip)
    loose, _ = train_update(blocks, local_steps=1, batch_size=4, optimizer="sgd", lr=lr, max_grad_norm=1e6)
    # Assert: update = -lr * g * clip / |g|, so |update| = lr * clip; a bound above |g| changes nothing.
    assert np.linalg.norm(unclipped) > 10 * lr * clip
    assert np.linalg.norm(clipped) == pytest.approx(lr * clip, rel=1e-4)
    np.testing.assert_allclose(clipped, unclipped * (lr * clip / np.linalg.norm(unclipped)), rtol=1e-4, atol=1e-12)
    np.testing.assert_array_equal(loose, unclipped)


def test_the_scheduled_rate_reaches_the_optimizer(blocks):
    # Prepare: SGD's step is linear in the rate. Round 2 of 2, one local step each: linear decay gives 1/2.
    task = Task(round=2, version=1, client_id="c")
    constant, _ = train_update(blocks, task=task, local_steps=1, optimizer="sgd", lr=0.1)
    # Execute
    linear, _ = train_update(blocks, task=task, rounds=2, local_steps=1, optimizer="sgd", lr=0.1, lr_schedule="linear")
    warming, _ = train_update(blocks, task=Task(round=1, version=0, client_id="c"), local_steps=1, lr=0.1,
                              warmup_steps=5)
    # Assert: half the constant-rate step; warmup's first step (rate 0) leaves the adapter where it was.
    np.testing.assert_allclose(linear, constant / 2, rtol=1e-5, atol=1e-9)
    assert not np.any(warming)


def test_a_decay_without_the_run_length_is_refused_before_the_adapter_changes(blocks):
    # Prepare: the adapter holds a global vector other than the one the task brings.
    adapter = attach_lora(load_base_model("tiny"), LoraSettings(), seed=0)
    held = np.full_like(adapter.initial_shared, 0.5)
    adapter.write_shared(held)
    private, out = adapter.initial_private.copy(), np.zeros_like(held)
    # Execute
    with pytest.raises(ValueError, match=r"client\.lr_schedule = 'cosine' needs the run's number of rounds"):
        run_task(adapter, Task(round=1, version=0, client_id="c"), global_vector=adapter.initial_shared,
                 private_vector=private, train_blocks=blocks, settings=ClientSettings(lr_schedule="cosine"), seed=0,
                 out=out)
    # Assert
    np.testing.assert_array_equal(adapter.read_shared(np.empty_like(held)), held)
    assert not np.any(out) and np.array_equal(private, adapter.initial_private)
