"""Multiple-choice evaluation scored by the log-likelihood of each option, as MMLU-style harnesses do.

Each option is scored by the model's log-probability of the option's tokens after the
question's prompt (Hendrycks et al. 2021, "Measuring Massive Multitask Language
Understanding", arXiv:2009.03300; the scoring of EleutherAI's lm-evaluation-harness): the
option with the highest total wins (`choice_accuracy`), and, since a long option collects
more negative log-probability, also the option with the highest mean per token
(`choice_accuracy_norm`). Chance is 1 / options per question, summed, so it adds up across
clients like the counts do.

A user's own questions come as JSONL, one object a line:
`{"question": "...", "choices": ["...", "..."], "answer": 1}` (the answer as a 0-based index
or a letter "A", "B", ...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fedlm.models.device import model_device


@dataclass(frozen=True)
class ChoiceQuestion:
    """A tokenized question: the prompt, each option's tokens, and the right option's index."""

    prompt: tuple[int, ...]
    options: tuple[tuple[int, ...], ...]
    answer: int

    def __post_init__(self) -> None:
        if len(self.options) < 2 or not 0 <= self.answer < len(self.options):
            raise ValueError(f"a question needs >= 2 options and an answer among them; got {len(self.options)}, {self.answer}")
        if any(len(o) == 0 for o in self.options):
            raise ValueError("an option has no tokens")


@dataclass(frozen=True)
class ChoiceRecord:
    """A question as read from JSONL, before tokenization."""

    question: str
    choices: tuple[str, ...]
    answer: int
    source: str


@dataclass(frozen=True)
class ChoiceScore:
    """Counts that add up across batches and clients."""

    correct: int = 0
    correct_norm: int = 0
    questions: int = 0
    chance: float = 0.0  # sum over questions of 1 / options


def fit_prompt(prompt: tuple[int, ...], option: tuple[int, ...], max_tokens: int) -> tuple[int, ...]:
    """The prompt cut from the left so that prompt + option fit in `max_tokens` (the option is kept whole)."""
    room = max(max_tokens - len(option), 1)
    return prompt[-room:]


@torch.no_grad()
def option_log_likelihoods(model: torch.nn.Module, question: ChoiceQuestion, *, max_tokens: int) -> tuple[list[float], list[float]]:
    """(sum, mean) log-probability of each option's tokens given the prompt, in one batch of right-padded rows."""
    rows = [fit_prompt(question.prompt, option, max_tokens) + option for option in question.options]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    logits = model(input_ids=ids.to(model_device(model))).logits.float()  # [options, width, vocab]
    logprobs = F.log_softmax(logits[:, :-1], dim=-1).cpu()  # position t predicts token t + 1
    sums, means = [], []
    for i, (row, option) in enumerate(zip(rows, question.options, strict=True)):
        start = len(row) - len(option)  # first option token's position
        targets = torch.tensor(option)
        picked = logprobs[i, start - 1 : len(row) - 1].gather(1, targets[:, None]).squeeze(1)
        sums.append(float(picked.sum()))
        means.append(float(picked.mean()))
    return sums, means


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
        raise ValueError(f"{source}: \"answer\" {value!r} is not one of the {count} choices")
    return index


def parse_choice_record(record: object, source: str) -> ChoiceRecord:
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(record).__name__}")
    question, choices = record.get("question"), record.get("choices")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{source}: expected a non-empty string \"question\"")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError(f"{source}: expected \"choices\", a list of at least 2 non-empty strings")
    return ChoiceRecord(question, tuple(choices), parse_answer(record.get("answer"), len(choices), source), source)


def read_choice_jsonl(path: Path) -> list[ChoiceRecord]:
    """Every question in a multiple-choice JSONL file; a bad line is refused with the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"eval.multiple_choice: {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err.msg})") from None
        records.append(parse_choice_record(record, source))
    if not records:
        raise ValueError(f"{path}: holds no questions")
    return records
