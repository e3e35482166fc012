"""Client work "classify": an intent/router classifier, the encoder with a linear head of one output per label.

Sequence classification as BERT fine-tunes it (Devlin et al. 2019, arXiv:1810.04805): the
encoder reads the text, a linear head over its pooled [CLS] state gives one logit per label,
and the loss is the cross-entropy of the text's label. LoRA on the encoder's attention and
the whole head train, and both travel in the update (PEFT's SEQ_CLS task puts the head in
modules_to_save). The label set is the federation's, fixed before any model loads
(fedlm.data.labelled): the sorted labels of the data folder, or the plays' genres by
default, so every client's head has the same outputs in the same order; a client whose data
holds a label outside it (`fedlm join --data`) is refused with the labels named.

Embedded default: one client per play, each speech labelled with its play's genre, so each
client holds a single label: label-skewed, the most non-IID a federation can be (no client
alone can learn to tell two genres apart). Held-out plays are the evaluation clients, so the
figure is how well the genre of an unseen play's speeches is recognised.

Evaluation: cross-entropy and accuracy over the evaluation clients' test samples (at most
eval.max_sequences of them, dealt from the clients in turn); `tokens` counts samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fedlm.config import ConfigError, RunConfig
from fedlm.data.labelled import check_labelled, folder_labels, genre_labels
from fedlm.data.redaction import redact_client, redact_federation
from fedlm.data.types import FederatedDataset, Sample
from fedlm.eval.metrics import EvalResult
from fedlm.models.device import model_device
from fedlm.retrieval.batches import cut_row, pad_rows
from fedlm.retrieval.encoder import load_encoder
from fedlm.work.language_model import load_configured_federation
from fedlm.work.protocol import Encoded


@dataclass(frozen=True, repr=False)
class LabelledBatch:
    """Padded texts and their label ids."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __repr__(self) -> str:
        return f"LabelledBatch(<{len(self)} texts>)"


@dataclass(frozen=True, repr=False)
class LabelledSet:
    """Token ids of a client's texts and their label ids (indices into the federation's label set)."""

    rows: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]
    pad_id: int

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_tokens(self) -> int:
        return sum(map(len, self.rows))

    def take(self, index: Sequence[int] | np.ndarray) -> LabelledBatch:
        chosen = [int(i) for i in np.asarray(index, dtype=np.int64)]
        ids, mask = pad_rows([self.rows[i] for i in chosen], self.pad_id)
        return LabelledBatch(ids, mask, torch.as_tensor([self.labels[i] for i in chosen], dtype=torch.long))

    def head(self, n: int) -> LabelledBatch:
        return self.take(range(min(n, len(self))))

    def __repr__(self) -> str:
        return f"LabelledSet(<{len(self)} texts>)"


@dataclass(frozen=True)
class LabelledEvalSet:
    """The evaluation clients' labelled test samples, as one set; what `evaluate` scores."""

    samples: LabelledSet
    questions: tuple = ()
    truncated: int = 0
    dropped: int = 0

    def counts(self) -> dict[str, int]:
        return {"samples": len(self.samples), "truncated": self.truncated, "dropped": self.dropped}


def logits_of(model: torch.nn.Module, batch: LabelledBatch) -> torch.Tensor:
    """The head's logits [texts, labels], on the model's device."""
    device = model_device(model)
    return model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits


def classify_loss(model: torch.nn.Module, batch: LabelledBatch) -> torch.Tensor:
    """Mean cross-entropy of the batch's labels."""
    logits = logits_of(model, batch)
    return torch.nn.functional.cross_entropy(logits.float(), batch.labels.to(logits.device))


def interleave(*parts: Sequence[Sample]) -> Iterator[Sample]:
    """The parts' first items, then their second items, ...; a part that runs out is skipped."""
    missing = object()
    for row in zip_longest(*parts, fillvalue=missing):
        yield from (item for item in row if item is not missing)


@torch.no_grad()
def score_labelled(model: torch.nn.Module, samples: LabelledSet, *, batch_size: int) -> EvalResult:
    """Summed cross-entropy, sample count and argmax hits of `model` on `samples`."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = samples.take(range(start, min(start + batch_size, len(samples))))
        logits = logits_of(model, batch).float()
        labels = batch.labels.to(logits.device)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
    return EvalResult(loss_sum, len(samples), correct)


@dataclass(frozen=True)
class ClassifyWork:
    kind: ClassVar[str] = "classify"
    encodes_up_front: ClassVar[bool] = True  # a label outside the label set is refused: check every client first
    config: RunConfig

    def labels(self) -> tuple[str, ...]:
        """The federation's label set: retrieval.labels where set (a `fedlm join` client gets it with the run's
        config), else, sorted, the data folder's labels or the plays' genres."""
        data = self.config.data
        if self.config.retrieval.labels:
            return self.config.retrieval.labels
        if data.source == "folder" and not Path(data.path).is_dir():
            raise ConfigError(f"data.path: task.kind = 'classify' takes the run's label set from the federation's "
                              f"folder, and {data.path} is no folder here: set retrieval.labels in the run's config (a "
                              "`fedlm join` client takes the run's labels from it)")
        if data.source == "folder":
            labels = folder_labels(str(Path(data.path).resolve()), data.encoding)
        else:
            labels = genre_labels()
        if len(labels) < 2:
            raise ConfigError(f"task.kind = 'classify' needs at least two labels; the data at {data.path} has "
                              f"{len(labels)}")
        return labels

    def load_base(self) -> Any:
        model = self.config.model
        return load_encoder(model.name, device=model.device, dtype=model.dtype,
                            num_labels=len(self.labels()))

    def load_federation(self) -> FederatedDataset:
        from fedlm.data.labelled import load_genre_plays

        config = self.config

        def plays(**kw: Any) -> FederatedDataset:
            dataset = load_genre_plays(test_fraction=kw["test_fraction"], seed=kw["seed"],
                                       min_chars=config.retrieval.min_chars)
            return redact_federation(dataset, config.redaction, source=config.data.source)

        return load_configured_federation(self, plays)

    def load_folder(self, path: Path, *, test_fraction: float, seed: int) -> FederatedDataset:
        from fedlm.data.labelled import load_labelled_folder

        dataset = load_labelled_folder(Path(path), test_fraction=test_fraction, seed=seed,
                                       encoding=self.config.data.encoding)
        return redact_federation(dataset, self.config.redaction, source="folder")

    def read_client(self, path: Path) -> list[Sample]:
        """One client's labelled JSONL (`fedlm join --data`), refused if it holds a label outside the run's set."""
        from fedlm.data.labelled import read_labelled_client

        samples = read_labelled_client(Path(path), encoding=self.config.data.encoding)
        check_labelled(samples, self.labels())
        return redact_client(samples, self.config.redaction)

    def encode_set(self, tokenizer: Any, samples: Sequence[Sample]) -> tuple[LabelledSet, int]:
        """The samples' token rows cut at data.seq_len (keeping the last [SEP]) and label ids; how many were cut."""
        labels = self.labels()
        labelled = check_labelled(samples, labels, kind=self.kind)
        index = {label: i for i, label in enumerate(labels)}
        seq_len = self.config.data.seq_len
        rows = tokenizer([s.text for s in labelled], truncation=False, verbose=False)["input_ids"] if labelled else []
        cut = sum(len(r) > seq_len for r in rows)
        encoded = LabelledSet(tuple(tuple(cut_row(r, seq_len)) for r in rows), tuple(index[s.label] for s in labelled),
                              int(tokenizer.pad_token_id))
        return encoded, cut

    def encode(self, tokenizer: Any, samples: Sequence[Sample]) -> Encoded:
        encoded, cut = self.encode_set(tokenizer, samples)
        return Encoded(encoded, len(encoded), truncated=cut)

    def make_eval_set(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]], *,
                      max_sequences: int) -> LabelledEvalSet:
        """At most `max_sequences` test samples, dealt from the clients in turn (each one's first, then second, ...)."""
        chosen = list(islice(interleave(*(samples[client] for client in samples)), max(max_sequences, 0)))
        encoded, cut = self.encode_set(tokenizer, chosen)
        return LabelledEvalSet(encoded, truncated=cut)

    def questions(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]]) -> tuple:
        return ()

    def loss(self, model: torch.nn.Module, batch: LabelledBatch) -> torch.Tensor:
        return classify_loss(model, batch)

    def evaluate(self, model: torch.nn.Module, eval_set: LabelledEvalSet) -> EvalResult:
        was_training = model.training
        model.eval()
        result = score_labelled(model, eval_set.samples, batch_size=self.config.eval.batch_size)
        model.train(was_training)
        return result

    def attach(self, base: Any) -> Any:
        from fedlm.models.lora import attach_lora

        return attach_lora(base, self.config.lora, seed=self.config.run.seed, task_type="SEQ_CLS")


__all__ = ["ClassifyWork", "LabelledEvalSet", "LabelledSet", "classify_loss"]
