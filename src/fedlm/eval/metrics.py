"""Loss, perplexity and next-token accuracy of a causal LM on token blocks, plus multiple-choice counts.

Sums are kept (not means) so results from several clients or batches add up exactly,
token-weighted, as federated evaluation needs. Labels of -100 (padding, and prompts under
instruction tuning) are not scored, so the perplexity of instruction work is the response's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedlm.data.blocks import IGNORE, Blocks, trim_batch
from fedlm.eval.choice import ChoiceScore
from fedlm.models.device import model_device
from fedlm.retrieval.ranking import RankingScore


@dataclass(frozen=True)
class EvalResult:
    loss_sum: float = 0.0
    tokens: int = 0
    correct: int = 0
    choice: ChoiceScore = ChoiceScore()  # multiple-choice counts; none asked by default
    ranking: RankingScore = RankingScore()  # recall@10 / MRR@10 sums of the retrieval kinds; none by default

    def __add__(self, other: EvalResult) -> EvalResult:
        a, b = self.choice, other.choice
        choice = ChoiceScore(a.correct + b.correct, a.correct_norm + b.correct_norm, a.questions + b.questions, a.chance + b.chance)
        return EvalResult(self.loss_sum + other.loss_sum, self.tokens + other.tokens, self.correct + other.correct, choice,
                          self.ranking + other.ranking)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else float("nan")

    @property
    def choice_accuracy(self) -> float:
        return self.choice.correct / self.choice.questions if self.choice.questions else float("nan")

    @property
    def choice_accuracy_norm(self) -> float:
        return self.choice.correct_norm / self.choice.questions if self.choice.questions else float("nan")

    @property
    def choice_chance(self) -> float:
        return self.choice.chance / self.choice.questions if self.choice.questions else float("nan")

    def as_dict(self) -> dict[str, float]:
        row = {"loss": self.loss, "perplexity": self.perplexity, "accuracy": self.accuracy, "tokens": self.tokens}
        if self.choice.questions:
            row.update(choice_accuracy=self.choice_accuracy, choice_accuracy_norm=self.choice_accuracy_norm,
                       choice_chance=self.choice_chance, choice_questions=self.choice.questions)
        if self.ranking.queries:
            k = self.ranking.k
            row.update({f"recall_at_{k}": self.ranking.recall, f"mrr_at_{k}": self.ranking.mrr,
                        "queries": self.ranking.queries})
        return row


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks: Blocks, *, batch_size: int = 8, trim: bool = False) -> EvalResult:
    """Next-token loss (natural log), token count and argmax-correct count over `blocks`.

    `trim` drops each batch's columns past its last labelled token (right-padded rows of
    instruction work): under causal attention they change no scored logit.
    """
    was_training = model.training
    model.eval()
    total = EvalResult()
    device = model_device(model)
    for start in range(0, len(blocks), batch_size):
        batch = Blocks(blocks.input_ids[start : start + batch_size], blocks.labels[start : start + batch_size])
        batch = trim_batch(batch) if trim else batch
        ids, labels = batch.input_ids.to(device), batch.labels.to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()  # [b, T-1, vocab] predicts tokens 1..T-1
        target = labels[:, 1:]
        mask = target != IGNORE
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
        correct = ((logits.argmax(-1) == target) & mask).sum()
        total = total + EvalResult(float(loss), int(mask.sum()), int(correct))
    model.train(was_training)
    return total
