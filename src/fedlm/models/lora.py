"""LoRA adapters through PEFT, split into shared parameters (the update) and private ones.

LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
A thin layer over PEFT: it attaches the adapter, lists the trainable parameters in a
fixed order, and splits them by the `private` name patterns. Shared parameters travel as
one flat float32 vector (see core.vectors); private ones stay with their client.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from fedlm.config import ConfigError, LoraSettings
from fedlm.core.rng import derive_seed
from fedlm.core.vectors import Spec, read_into, spec_of, write_from
from fedlm.models.base import BaseModel
from fedlm.models.card import BaseOrigin
from fedlm.models.output_dir import write_output_dir


@dataclass
class Adapter:
    """One PEFT model whose trainable tensors are addressed as two flat vectors."""

    model: PeftModel
    shared_spec: Spec
    shared_params: list[torch.Tensor]
    private_spec: Spec
    private_params: list[torch.Tensor]
    initial_shared: np.ndarray  # the adapter as initialised: global version 0
    initial_private: np.ndarray  # what a client's private parameters start from

    def read_shared(self, out: np.ndarray) -> np.ndarray:
        return read_into(self.shared_spec, self.shared_params, out)

    def write_shared(self, vector: np.ndarray) -> None:
        write_from(self.shared_spec, self.shared_params, vector)

    def read_private(self, out: np.ndarray) -> np.ndarray:
        return read_into(self.private_spec, self.private_params, out)

    def write_private(self, vector: np.ndarray) -> None:
        write_from(self.private_spec, self.private_params, vector)

    @property
    def trainable(self) -> list[torch.Tensor]:
        return self.shared_params + self.private_params


def is_private(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# Layer types PEFT's LoRA can wrap (bitsandbytes' 4-bit Linear is a torch Linear); transformers' GPT-2 Conv1D too.
ADAPTABLE_LAYERS = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                    torch.nn.MultiheadAttention)


def adaptable_modules(model: torch.nn.Module) -> list[str]:
    """The dotted names of the model's layers LoRA can wrap."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE_LAYERS + (Conv1D,))]


def is_target(module_name: str, target: str) -> bool:
    """PEFT's rule for a list of target_modules: the name itself, or its dotted suffix."""
    return module_name == target or module_name.endswith(f".{target}")


def check_target_modules(model: torch.nn.Module, targets: tuple[str, ...], model_name: str) -> None:
    """Refuse any lora.target_modules entry that matches no layer of the model, naming the layers it has.

    PEFT refuses only when no entry matches; a typo beside a valid name would silently adapt fewer layers.
    """
    names = adaptable_modules(model)
    unmatched = [t for t in targets if not any(is_target(name, t) for name in names)]
    if unmatched:
        candidates = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in names}))
        raise ConfigError(f"lora.target_modules: {', '.join(map(repr, unmatched))} "
                          f"{'matches' if len(unmatched) == 1 else 'match'} no layer of model {model_name!r}; "
                          f"its layers LoRA can adapt: {candidates}")


def attach_lora(base: BaseModel, settings: LoraSettings, *, seed: int, task_type: str = "CAUSAL_LM") -> Adapter:
    """Wrap the base model with a LoRA adapter initialised from `seed` (same seed, same adapter).

    `task_type` is PEFT's: "CAUSAL_LM" for the language models, "FEATURE_EXTRACTION" for a
    sentence encoder, "SEQ_CLS" for an encoder with a scoring or classification head (the
    head then trains whole and travels in the update, as PEFT's modules_to_save).
    """
    check_target_modules(base.model, settings.target_modules, base.name)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type=task_type,
    )
    model = base.model
    if base.quantized:  # QLoRA: norms in float32, inputs that carry gradients through the frozen 4-bit layers
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=is_checkpointing(model))
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "lora-init"))
        try:
            model = get_peft_model(model, config)
        except ValueError as err:
            raise ConfigError(f"lora.target_modules: {list(settings.target_modules)} do not fit model {base.name!r}: {err}") from None
    if settings.aggregation == "ffa":
        freeze_lora_a(model)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    shared = {n: p for n, p in named.items() if not is_private(n, settings.private)}
    private = {n: p for n, p in named.items() if is_private(n, settings.private)}
    if not shared:
        raise ValueError(f"lora.private {list(settings.private)} matches every adapter parameter; nothing would be shared")
    adapter = Adapter(
        model=model,
        shared_spec=spec_of(shared),
        shared_params=list(shared.values()),
        private_spec=spec_of(private),
        private_params=list(private.values()),
        initial_shared=np.empty(0, np.float32),
        initial_private=np.empty(0, np.float32),
    )
    adapter.initial_shared = adapter.read_shared(np.empty(adapter.shared_spec.size, np.float32))
    adapter.initial_private = adapter.read_private(np.empty(adapter.private_spec.size, np.float32))
    return adapter


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Whether the model recomputes activations in the backward pass (transformers renamed the flag in v5)."""
    return bool(getattr(model, "is_activation_checkpointing", False) or getattr(model, "gradient_checkpointing", False))


def freeze_lora_a(model: torch.nn.Module) -> None:
    """FFA-LoRA (Sun et al., ICLR 2024, arXiv:2403.12313): A stays at its seeded init everywhere.

    Every client attaches the adapter from the same run seed, so all hold the same A; only
    B trains and travels, B.A is linear in B, and averaging B is exact.
    """
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.requires_grad_(False)


def client_rank(client_id: str, ranks: tuple[int, ...], full_rank: int) -> int:
    """The LoRA rank a client trains: one of `ranks`, fixed by its id (the full rank if none given)."""
    if not ranks:
        return full_rank
    digest = hashlib.sha256(client_id.encode()).digest()
    return ranks[int.from_bytes(digest[:8], "little") % len(ranks)]


def rank_masks(adapter: Adapter, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, 0/1 mask) that keep only the first `rank` components of every LoRA factor.

    A is [r, in]: rows >= rank are masked; B is [out, r]: columns >= rank. A client of a
    lower rank trains the leading components of the global factors (HetLoRA-style zero
    padding; the svd aggregator orders components by singular value).
    """
    masks = []
    for spec, params in ((adapter.shared_spec, adapter.shared_params), (adapter.private_spec, adapter.private_params)):
        for entry, p in zip(spec.entries, params, strict=True):
            mask = torch.ones_like(p)
            if "lora_A" in entry.name:
                mask[rank:] = 0
            elif "lora_B" in entry.name:
                mask[:, rank:] = 0
            else:
                continue
            masks.append((p, mask))
    return masks


def export_adapter(
    adapter: Adapter, global_vector: np.ndarray, directory: Path, *, base: BaseOrigin | None = None,
    card: str | None = None, overwrite: bool = True,
) -> Path:
    """Save the global adapter in PEFT format (adapter_config.json + adapter_model.safetensors), whole or not at all.

    `base` is what adapter_config.json names as the base model (None: the directory it was
    loaded from); `card` becomes README.md in place of PEFT's empty template. Private
    parameters are exported at their initial values: they belong to clients. The adapter
    is left holding the global vector.
    """
    adapter.write_shared(global_vector)
    adapter.write_private(adapter.initial_private)
    peft_config = adapter.model.peft_config["default"]
    loaded_from = peft_config.base_model_name_or_path

    def save(tmp: Path) -> None:
        peft_config.base_model_name_or_path = base.name_or_path if base is not None else loaded_from
        try:
            # no vocabulary is resized here, so no full embedding to save; "auto" would look the base up on the Hub
            adapter.model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        finally:
            peft_config.base_model_name_or_path = loaded_from
        write_card(tmp, card)

    return write_output_dir(Path(directory), save, overwrite=overwrite)


def save_merged(model: PeftModel, tokenizer, directory: Path, *, card: str | None = None, overwrite: bool = False) -> Path:
    """Merge the adapter into the base weights (PEFT merge_and_unload) and save a plain transformers model + tokenizer.

    The result loads with AutoModelForCausalLM.from_pretrained as it is. Merging rewrites
    the base model's weights in place and removes the LoRA layers: `model` is used up.
    """
    merged = model.merge_and_unload()

    def save(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_card(tmp, card)

    return write_output_dir(Path(directory), save, overwrite=overwrite)


def write_card(directory: Path, card: str | None) -> None:
    """README.md: the model card, or none at all rather than PEFT's template of blanks."""
    readme = Path(directory) / "README.md"
    if card is None:
        readme.unlink(missing_ok=True)
    else:
        readme.write_text(card, encoding="utf-8")
