"""Multiple-choice evaluation scored by the log-likelihood of each option, as MMLU-style harnesses do.

Each option is scored by the model's log-probability of the option's tokens after the
question's prompt (Hendrycks et al. 2021, "Measuring Massive Multitask Language
Understanding", arXiv:2009.03300; the scoring of EleutherAI's lm-evaluation-harness): the
option with the highest total wins (`choice_accuracy`), and, since a long option collects
more negative log-probability, also the option with the highest mean per token
(`choice_accuracy_norm`). Chance is 1 / options per question, summed, so it adds up across
clients like the counts do.

The prompt is read once per question and its key/value cache shared by the options, which
are then read together in one batch: the options of a question cost their own tokens only.

A user's own questions come as JSONL, one object a line:
`{"question": "...", "choices": ["...", "..."], "answer": 1}` (the answer as a 0-based index
or a letter "A", "B", ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedlm.models.device import model_device


@dataclass(frozen=True)
class ChoiceQuestion:
    """A tokenized question: the prompt, each option's tokens, the right option's index, and whose data it came from."""

    prompt: tuple[int, ...]
    options: tuple[tuple[int, ...], ...]
    answer: int
    owner: str = ""  # the client whose held-out sample it was built from; "" for a user's own questions

    def __post_init__(self) -> None:
        if len(self.options) < 2 or not 0 <= self.answer < len(self.options):
            raise ValueError(f"a question needs >= 2 options and an answer among them; got {len(self.options)}, {self.answer}")
        if not self.prompt or any(len(o) == 0 for o in self.options):
            raise ValueError("a question's prompt and every option need at least one token")


@dataclass(frozen=True)
class ChoiceRecord:
    """A question as read from JSONL, before tokenization (its repr shows no text)."""

    question: str = field(repr=False)
    choices: tuple[str, ...] = field(repr=False)
    answer: int
    source: str


@dataclass(frozen=True)
class ChoiceScore:
    """Counts that add up across batches and clients."""

    correct: int = 0
    correct_norm: int = 0
    questions: int = 0
    chance: float = 0.0  # sum over questions of 1 / options


def option_tokens(tokenizer: Any, texts: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Each option's tokens, read as a continuation (no special tokens added)."""
    return tuple(tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


@torch.no_grad()
def option_log_likelihoods(model: torch.nn.Module, question: ChoiceQuestion, *, max_tokens: int) -> tuple[list[float], list[float]]:
    """(sum, mean) log-probability of each option's tokens given the prompt.

    The prompt (cut from the left so that it and the longest option fit in `max_tokens`) is
    read once; its cache is repeated for the options, read in one right-padded batch.
    """
    device, count = model_device(model), len(question.options)
    longest = max(len(o) for o in question.options)
    prompt = question.prompt[-max(max_tokens - longest, 1):]
    head = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
    cache = head.cache  # transformers >= 5.24 names the key/value cache `cache` (formerly past_key_values)
    cache.batch_repeat_interleave(count)
    options = torch.zeros((count, longest), dtype=torch.long, device=device)
    for i, option in enumerate(question.options):
        options[i, : len(option)] = torch.tensor(option, device=device)
    tail = model(input_ids=options, cache=cache, use_cache=True).logits  # [options, longest, vocab]
    # option token 0 is predicted by the prompt's last position; token j > 0 by the option's position j - 1
    logits = torch.cat([head.logits[:, -1:].expand(count, 1, -1), tail[:, :-1]], dim=1).float()
    picked = logits.gather(2, options[:, :, None]).squeeze(2) - torch.logsumexp(logits, dim=2)  # [options, longest]
    lengths = torch.tensor([len(o) for o in question.options], device=device)
    mask = torch.arange(longest, device=device)[None, :] < lengths[:, None]
    sums = (picked * mask).sum(1)
    return sums.tolist(), (sums / lengths).tolist()


def score_choices(model: torch.nn.Module, questions: Sequence[ChoiceQuestion], *, max_tokens: int) -> ChoiceScore:
    """How many questions the model answers right, by total and by mean option log-likelihood."""
    if not questions:
        return ChoiceScore()
    was_training = model.training
    model.eval()
    correct = correct_norm = 0
    for question in questions:
        sums, means = option_log_likelihoods(model, question, max_tokens=max_tokens)
        correct += int(max(range(len(sums)), key=sums.__getitem__) == question.answer)
        correct_norm += int(max(range(len(means)), key=means.__getitem__) == question.answer)
    model.train(was_training)
    return ChoiceScore(correct, correct_norm, len(questions), sum(1 / len(q.options) for q in questions))


def parse_answer(value: object, count: int, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{source}: \"answer\" must be an option index or a letter, got a {type(value).__name__}")
    if isinstance(value, str) and len(value.strip()) != 1:
        raise ValueError(f"{source}: \"answer\" as a string must be one letter (A, B, ...)")
    index = value if isinstance(value, int) else ord(value.strip().upper()) - ord("A")
    if not 0 <= index < count:
        raise ValueError(f"{source}: \"answer\" is not one of the {count} choices")
    return index


def parse_choice_record(record: dict, source: str) -> ChoiceRecord:
    question, choices = record.get("question"), record.get("choices")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{source}: expected a non-empty string \"question\"")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError(f"{source}: expected \"choices\", a list of at least 2 non-empty strings")
    return ChoiceRecord(question, tuple(choices), parse_answer(record.get("answer"), len(choices), source), source)


def read_choice_jsonl(path: Path) -> list[ChoiceRecord]:
    """Every question in a multiple-choice JSONL file; a bad line is refused with the file and line."""
    from fedlm.data.folders import read_jsonl_objects

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"eval.multiple_choice: {path} is not a file")
    records = [parse_choice_record(record, f"{path}, line {number}") for number, record in read_jsonl_objects(path)]
    if not records:
        raise ValueError(f"{path}: holds no questions")
    return records
