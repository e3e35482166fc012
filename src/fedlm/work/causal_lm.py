"""Client work "causal_lm": next-token loss over a client's text, packed into blocks.

The language-modelling objective of GPT-2 pretraining on each client's own text: samples
are tokenized, joined with the end-of-text token and cut into blocks of data.seq_len
(fedlm.data.blocks.pack_texts, which streams: a large client is tokenized a chunk at a time
and its tokens kept compact), so no compute goes to padding. Folders are read in
data.encoding (fedlm.data.folders). Evaluation is held-out perplexity, plus multiple-choice
questions from a JSONL file when `eval.multiple_choice` names one (a question is read as its
text and a new line; each option follows it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from fedlm.config import RunConfig
from fedlm.data.blocks import Blocks, concat_blocks, pack_texts
from fedlm.data.redaction import redact_client, redact_federation
from fedlm.data.types import FederatedDataset, Sample
from fedlm.eval.choice import ChoiceQuestion, ChoiceRecord, option_tokens, read_choice_jsonl
from fedlm.eval.metrics import EvalResult
from fedlm.work.protocol import Encoded, EvalSet
from fedlm.work.language_model import attach_adapter, load_language_model, batch_loss, evaluate_set, load_configured_federation


def check_texts(samples: Sequence[Sample], kind: str) -> list[str]:
    texts = [s for s in samples if isinstance(s, str)]
    if len(texts) != len(samples):
        raise ValueError(f"task.kind = {kind!r} trains on plain text, but the data holds conversations; "
                         "set task.kind = 'instruction' for chat, prompt/completion or Alpaca records")
    return texts


@dataclass(frozen=True)
class CausalLmWork:
    kind: ClassVar[str] = "causal_lm"
    encodes_up_front: ClassVar[bool] = False  # packing text cuts and drops nothing: clients are tokenized when they train
    config: RunConfig

    def load_federation(self) -> FederatedDataset:
        from fedlm.data.shakespeare import load_shakespeare

        return load_configured_federation(self, lambda **kw: redact_federation(
            load_shakespeare(**kw), self.config.redaction, source=self.config.data.source))

    def load_folder(self, path: Path, *, test_fraction: float, seed: int) -> FederatedDataset:
        from fedlm.data.folders import load_folder

        dataset = load_folder(Path(path), test_fraction=test_fraction, seed=seed, encoding=self.config.data.encoding)
        return redact_federation(dataset, self.config.redaction, source="folder")  # before tokenization

    def read_client(self, path: Path) -> list[Sample]:
        from fedlm.data.folders import read_client_samples

        return redact_client(read_client_samples(Path(path), encoding=self.config.data.encoding), self.config.redaction)

    def encode(self, tokenizer: Any, samples: Sequence[Sample]) -> Encoded:
        texts = check_texts(samples, self.kind)
        return Encoded(pack_texts(tokenizer, texts, self.config.data.seq_len), len(texts))

    def make_eval_set(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]], *, max_sequences: int) -> EvalSet:
        """The first `max_sequences` blocks of the clients' packed samples, in client order (packing stops there)."""
        seq_len, parts, left = self.config.data.seq_len, [], max(max_sequences, 0)
        for client in samples:
            texts = check_texts(samples[client], self.kind)
            if left:
                parts.append(pack_texts(tokenizer, texts, seq_len, max_blocks=left))
                left -= len(parts[-1])
        return EvalSet(concat_blocks(parts, seq_len), self.questions(tokenizer, samples))

    def questions(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]]) -> tuple[ChoiceQuestion, ...]:
        """The questions of eval.multiple_choice's JSONL file; plain text has no built-in task."""
        source = self.config.eval.multiple_choice
        if source in ("auto", "off"):
            return ()
        records = read_choice_jsonl(Path(source))[: self.config.eval.choice_questions]
        return tuple(text_question(tokenizer, r) for r in records)

    def loss(self, model: torch.nn.Module, batch: Blocks) -> torch.Tensor:
        return batch_loss(model, batch)

    def evaluate(self, model: torch.nn.Module, eval_set: EvalSet) -> EvalResult:
        return evaluate_set(model, eval_set, self.config, trim=False)

    def attach(self, base: Any) -> Any:
        return attach_adapter(base, self.config)

    def load_base(self) -> Any:
        return load_language_model(self.config)


def text_question(tokenizer: Any, record: ChoiceRecord) -> ChoiceQuestion:
    """A question as plain text: its text and a new line, each option after it."""
    prompt = tokenizer(record.question + "\n", add_special_tokens=False)["input_ids"]
    return ChoiceQuestion(tuple(prompt), option_tokens(tokenizer, record.choices), record.answer)
