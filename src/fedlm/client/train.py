"""Local training on one client: global adapter in, update (delta of shared parameters) out.

FedAvg's client step (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data", arXiv:1602.05629): a few epochs or steps of local
optimisation from the current global model. The model is never copied: the global
vector and this client's private parameters are written into the one adapter in place.

Each optimizer step averages the gradients of `client.grad_accumulation` micro-batches,
lets the gradient hooks adjust them (FedProx, rank masks), clips their joint L2 norm to
`client.max_grad_norm`, and steps at the round's scheduled rate (client.schedule): the
order transformers' Trainer uses, with FedProx's term counted as part of the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from fedlm.client.schedule import round_lr_factors
from fedlm.config import ClientSettings
from fedlm.core.rng import derive_seed, make_rng
from fedlm.core.types import Task, Update
from fedlm.data.blocks import Blocks, batch_order, iter_batches
from fedlm.models.device import model_device
from fedlm.models.lora import Adapter, rank_masks
from fedlm.work.language_model import batch_loss

StepCallback = Callable[[int, float], None]
GradientHook = Callable[[], None]
LossFn = Callable[[torch.nn.Module, Blocks], torch.Tensor]  # the client work's loss of one batch


@dataclass(frozen=True)
class LocalResult:
    steps: int
    tokens: int
    mean_loss: float
    last_loss: float


def make_optimizer(params: list[torch.Tensor], settings: ClientSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def local_batch_order(num_blocks: int, settings: ClientSettings, rng: np.random.Generator) -> np.ndarray:
    """Block indices of the round's micro-batches: local_steps * grad_accumulation rows of batch_size.

    Consecutive rows make one optimizer step; with grad_accumulation = 1 this is batch_order's
    draw for local_steps batches, so the default run sees the same batches as before.
    """
    return batch_order(num_blocks, steps=settings.local_steps * settings.grad_accumulation,
                       batch_size=settings.batch_size, rng=rng)


def accumulate_gradients(model: torch.nn.Module, micro_batches: Sequence[Blocks], loss_fn: LossFn) -> float:
    """Backpropagate the mean of the micro-batches' losses (one at a time); returns that mean."""
    share = len(micro_batches)
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(model, batch)
        (loss if share == 1 else loss / share).backward()  # with one micro-batch, exactly the plain step
        total += loss.item()
    return total if share == 1 else total / share


def train_local(
    model: torch.nn.Module,
    params: list[torch.Tensor],
    batches: Iterable[Blocks],
    settings: ClientSettings,
    on_step: StepCallback | None = None,
    after_backward: GradientHook | None = None,
    loss_fn: LossFn = batch_loss,
    lr_factors: Sequence[float] | None = None,
) -> LocalResult:
    """Supervised steps of the client work's loss over `batches` (micro-batches); returns loss statistics.

    Every `settings.grad_accumulation` micro-batches make one optimizer step (a short last
    group averages what it has). `after_backward` may adjust the gradients before each step
    (FedProx, rank masks); then they are clipped to `settings.max_grad_norm` (0 = off).
    Step k runs at `settings.lr * lr_factors[k]`; None leaves the rate at `settings.lr`.
    """
    optimizer = make_optimizer(params, settings)
    model.train()
    losses, tokens = [], 0
    micro_batches = iter(batches)
    step = 0
    while group := list(islice(micro_batches, settings.grad_accumulation)):
        if lr_factors is not None:
            for param_group in optimizer.param_groups:
                param_group["lr"] = settings.lr * lr_factors[step]
        losses.append(accumulate_gradients(model, group, loss_fn))
        if after_backward is not None:
            after_backward()
        if settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(batch.num_tokens for batch in group)
        if on_step is not None:
            on_step(step, losses[-1])
        step += 1
    model.eval()
    return LocalResult(steps=len(losses), tokens=tokens, mean_loss=float(np.mean(losses)), last_loss=losses[-1])


def prox_hook(adapter: Adapter, global_vector: np.ndarray, mu: float) -> GradientHook:
    """FedProx (Li et al. 2020, arXiv:1812.06127): the gradient of mu/2 ||w - w_global||^2.

    Added straight to the shared parameters' gradients, w/o building it into the graph.
    """
    device = model_device(adapter.model)
    anchors = [torch.from_numpy(global_vector[e.offset : e.stop]).view(e.shape).to(device) for e in adapter.shared_spec.entries]

    def add_proximal_gradient() -> None:
        with torch.no_grad():
            for p, anchor in zip(adapter.shared_params, anchors, strict=True):
                if p.grad is not None:
                    p.grad.add_(p - anchor, alpha=mu)

    return add_proximal_gradient


def mask_hook(masks: list[tuple[torch.Tensor, torch.Tensor]]) -> GradientHook:
    def mask_gradients() -> None:
        for p, mask in masks:
            if p.grad is not None:
                p.grad.mul_(mask)

    return mask_gradients


def chain_hooks(hooks: list[GradientHook]) -> GradientHook | None:
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def run_all() -> None:
        for hook in hooks:
            hook()

    return run_all


def run_task(
    adapter: Adapter,
    task: Task,
    *,
    global_vector: np.ndarray,
    private_vector: np.ndarray,
    train_blocks: Blocks,
    settings: ClientSettings,
    seed: int,
    out: np.ndarray,
    on_step: StepCallback | None = None,
    rank: int | None = None,
    encode: Callable[..., dict[str, float]] | None = None,
    residual: np.ndarray | None = None,
    loss_fn: LossFn = batch_loss,
    rounds: int | None = None,
) -> Update:
    """Train one client on `task` and return its update.

    `out` is a preallocated buffer that receives the delta (new shared - global): the
    returned Update's vector *is* `out`, so the caller folds it in before the next client.
    `private_vector` is updated in place with the client's new private parameters.
    `rank` below the adapter's rank trains only the leading LoRA components; `encode`
    runs the client side of the update pipeline (clipping, ...) on the delta in place;
    `residual` is the client's error-feedback state for top-k sparsification; `loss_fn` is
    the client work's loss (fedlm.work); `rounds` (federation.rounds) is the length of the
    run that client.lr_schedule decays over, needed for "linear" and "cosine".
    """
    lr_factors = round_lr_factors(settings, round=task.round, rounds=rounds)  # refuses before any state changes
    adapter.write_shared(global_vector)
    adapter.write_private(private_vector)
    hooks = []
    if settings.prox_mu > 0:
        hooks.append(prox_hook(adapter, global_vector, settings.prox_mu))
    if rank is not None:
        masks = rank_masks(adapter, rank)
        with torch.no_grad():
            for p, mask in masks:
                p.mul_(mask)
        hooks.append(mask_hook(masks))
    order = local_batch_order(len(train_blocks), settings, make_rng(seed, "batches", task.round, task.client_id))
    torch.manual_seed(derive_seed(seed, "dropout", task.round, task.client_id))  # LoRA dropout has no generator argument
    result = train_local(adapter.model, adapter.trainable, iter_batches(train_blocks, order), settings, on_step,
                         chain_hooks(hooks), loss_fn, lr_factors)
    adapter.read_shared(out)
    np.subtract(out, global_vector, out=out)
    adapter.read_private(private_vector)
    metrics = {"train_loss": result.mean_loss, "last_loss": result.last_loss, "steps": result.steps, "tokens": result.tokens}
    if encode is not None:
        metrics.update(encode(out, task, residual))
    return Update(task.round, task.version, task.client_id, len(train_blocks), out, metrics)
