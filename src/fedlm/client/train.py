"""Local training on one client: global adapter in, update (delta of shared parameters) out.

FedAvg's client step (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data", arXiv:1602.05629): a few epochs or steps of local
optimisation from the current global model. The model is never copied: the global
vector and this client's private parameters are written into the one adapter in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

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


def train_local(
    model: torch.nn.Module,
    params: list[torch.Tensor],
    batches: Iterable[Blocks],
    settings: ClientSettings,
    on_step: StepCallback | None = None,
    after_backward: GradientHook | None = None,
    loss_fn: LossFn = batch_loss,
) -> LocalResult:
    """Plain supervised steps of the client work's loss over `batches`; returns loss statistics.

    `after_backward` may adjust the gradients before each step (FedProx, rank masks).
    """
    optimizer = make_optimizer(params, settings)
    model.train()
    losses, tokens = [], 0
    for step, batch in enumerate(batches):
        loss = loss_fn(model, batch)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += batch.num_tokens
        if on_step is not None:
            on_step(step, losses[-1])
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
) -> Update:
    """Train one client on `task` and return its update.

    `out` is a preallocated buffer that receives the delta (new shared - global): the
    returned Update's vector *is* `out`, so the caller folds it in before the next client.
    `private_vector` is updated in place with the client's new private parameters.
    `rank` below the adapter's rank trains only the leading LoRA components; `encode`
    runs the client side of the update pipeline (clipping, ...) on the delta in place;
    `residual` is the client's error-feedback state for top-k sparsification; `loss_fn` is
    the client work's loss (fedlm.work).
    """
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
    order = batch_order(
        len(train_blocks), steps=settings.local_steps, batch_size=settings.batch_size,
        rng=make_rng(seed, "batches", task.round, task.client_id),
    )
    torch.manual_seed(derive_seed(seed, "dropout", task.round, task.client_id))  # LoRA dropout has no generator argument
    result = train_local(adapter.model, adapter.trainable, iter_batches(train_blocks, order), settings, on_step,
                         chain_hooks(hooks), loss_fn)
    adapter.read_shared(out)
    np.subtract(out, global_vector, out=out)
    adapter.read_private(private_vector)
    metrics = {"train_loss": result.mean_loss, "last_loss": result.last_loss, "steps": result.steps, "tokens": result.tokens}
    if encode is not None:
        metrics.update(encode(out, task, residual))
    return Update(task.round, task.version, task.client_id, len(train_blocks), out, metrics)
