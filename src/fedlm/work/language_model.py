"""The steps every language-model kind of client work shares: the batch loss, evaluation, the adapter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedlm.config import RunConfig
from fedlm.data.blocks import Blocks
from fedlm.eval.choice import score_choices
from fedlm.eval.metrics import EvalResult, evaluate
from fedlm.models.device import model_device

CHOICE_CONTEXT = 4  # multiple-choice rows may be this many times data.seq_len (the prompt is cut from the left past it)


def batch_loss(model: torch.nn.Module, batch: Blocks) -> torch.Tensor:
    """The model's own mean next-token loss over the batch's labelled tokens, on the model's device."""
    device = model_device(model)
    return model(input_ids=batch.input_ids.to(device), labels=batch.labels.to(device)).loss


def evaluate_set(model: torch.nn.Module, eval_set: Any, config: RunConfig, *, trim: bool) -> EvalResult:
    result = evaluate(model, eval_set.blocks, batch_size=config.eval.batch_size, trim=trim)
    choice = score_choices(model, eval_set.questions, max_tokens=CHOICE_CONTEXT * config.data.seq_len)
    return EvalResult(result.loss_sum, result.tokens, result.correct, choice)


def attach_adapter(base: Any, config: RunConfig) -> Any:
    """LoRA on the base model: the update is its shared parameters (fedlm.models.lora)."""
    from fedlm.models.lora import attach_lora

    return attach_lora(base, config.lora, seed=config.run.seed)


def load_language_model(config: RunConfig) -> Any:
    """The causal LM [model] names, on its device (fedlm.models.base)."""
    from fedlm.models.base import load_configured_model

    return load_configured_model(config.model)


def load_configured_federation(work: Any, embedded: Callable[..., Any]) -> Any:
    """The clients [data] names, for `work`: a folder in the work's layout, or its embedded default (the plays)."""
    data, seed = work.config.data, work.config.run.seed
    if data.source == "folder":
        return work.load_folder(Path(data.path), test_fraction=data.test_fraction, seed=seed)
    return embedded(min_lines=data.min_lines, test_fraction=data.test_fraction, seed=seed)
