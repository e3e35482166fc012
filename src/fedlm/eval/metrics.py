"""Loss, perplexity and next-token accuracy of a causal LM on packed token blocks.

Sums are kept (not means) so results from several clients or batches add up exactly,
token-weighted, as federated evaluation needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedlm.data.blocks import IGNORE, Blocks


@dataclass(frozen=True)
class EvalResult:
    loss_sum: float = 0.0
    tokens: int = 0
    correct: int = 0

    def __add__(self, other: EvalResult) -> EvalResult:
        return EvalResult(self.loss_sum + other.loss_sum, self.tokens + other.tokens, self.correct + other.correct)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "perplexity": self.perplexity, "accuracy": self.accuracy, "tokens": self.tokens}


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks: Blocks, *, batch_size: int = 8) -> EvalResult:
    """Next-token loss (natural log), token count and argmax-correct count over `blocks`."""
    was_training = model.training
    model.eval()
    total = EvalResult()
    for start in range(0, len(blocks), batch_size):
        ids = blocks.input_ids[start : start + batch_size]
        labels = blocks.labels[start : start + batch_size]
        logits = model(input_ids=ids).logits[:, :-1].float()  # [b, T-1, vocab] predicts tokens 1..T-1
        target = labels[:, 1:]
        mask = target != IGNORE
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
        correct = ((logits.argmax(-1) == target) & mask).sum()
        total = total + EvalResult(float(loss), int(mask.sum()), int(correct))
    model.train(was_training)
    return total
