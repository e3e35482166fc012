"""The client-work seam: what a kind of client work does between a client's data and its update.

A kind of client work turns a client's samples into batches, computes the loss the client
trains on, evaluates a model on held-out samples, and says which parameters the update
holds (`attach`). The round engine, the update pipeline, DP and SecAgg see only the Spec
and the flat vectors the adapter yields, so every kind gets them unchanged. One module per
kind (causal_lm.py, instruction.py), registered in fedlm.work; `task.kind` picks one.

Data loading takes no model, so a bad data set fails before the model loads; encoding
and evaluation take the tokenizer and the model the assembly loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from fedlm.config import RunConfig
from fedlm.data.blocks import Blocks
from fedlm.data.types import FederatedDataset, Sample
from fedlm.eval.choice import ChoiceQuestion
from fedlm.eval.metrics import EvalResult
from fedlm.eval.slices import split_round_robin


@dataclass(frozen=True)
class Encoded:
    """A client's samples as token blocks, and what encoding had to cut or leave out (counted, never silent)."""

    blocks: Blocks
    samples: int
    truncated: int = 0  # sequences cut at data.seq_len
    dropped: int = 0  # samples left out (data.overlong = "drop")

    def counts(self) -> dict[str, int]:
        return {"samples": self.samples, "sequences": len(self.blocks), "truncated": self.truncated, "dropped": self.dropped}


@dataclass(frozen=True)
class EvalSet:
    """What a model is scored on: token blocks (loss, perplexity) and multiple-choice questions."""

    blocks: Blocks
    questions: tuple[ChoiceQuestion, ...] = ()
    truncated: int = 0  # held-out samples cut at data.seq_len
    dropped: int = 0  # held-out samples left out (data.overlong = "drop")

    def counts(self) -> dict[str, int]:
        return {"sequences": len(self.blocks), "questions": len(self.questions), "truncated": self.truncated,
                "dropped": self.dropped}

    def split_round_robin(self, parts: int) -> list[EvalSet]:
        """Dealt into `parts` sets like cards: block i and question i go to set i mod parts."""
        blocks = split_round_robin(self.blocks, parts)
        return [EvalSet(b, self.questions[i::parts]) for i, b in enumerate(blocks)]


class ClientWork(Protocol):
    """One kind of client work, built from the run config (`fedlm.work.make_work`). Must pickle."""

    kind: ClassVar[str]
    encodes_up_front: ClassVar[bool]  # encoding can refuse, cut or drop samples: check every client before round 1
    config: RunConfig

    def load_federation(self) -> FederatedDataset:
        """The run's clients as [data] names them (the embedded default or a folder)."""

    def load_folder(self, path: Path, *, test_fraction: float, seed: int) -> FederatedDataset:
        """A federation from a folder in this kind's layout."""

    def read_client(self, path: Path) -> list[Sample]:
        """One client's own samples (`fedlm join --data`)."""

    def encode(self, tokenizer: Any, samples: Sequence[Sample]) -> Encoded:
        """A client's samples as token blocks of data.seq_len."""

    def make_eval_set(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]], *, max_sequences: int) -> EvalSet:
        """Held-out samples by client as an evaluation set, at most `max_sequences` blocks."""

    def questions(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]]) -> tuple[ChoiceQuestion, ...]:
        """The multiple-choice questions eval.multiple_choice asks about held-out `samples` (by client)."""

    def loss(self, model: torch.nn.Module, batch: Blocks) -> torch.Tensor:
        """The scalar training loss of one batch (on the model's device)."""

    def evaluate(self, model: torch.nn.Module, eval_set: EvalSet) -> EvalResult:
        """Loss, perplexity, token accuracy and multiple-choice counts of `model` on `eval_set`."""

    def attach(self, base: Any) -> Any:
        """The adapter whose shared parameters are the update (fedlm.models.lora.Adapter)."""

    def load_base(self) -> Any:
        """The base model and tokenizer on [model]'s device (fedlm.models.base.BaseModel)."""
