"""The contrastive loss of a bi-encoder: InfoNCE with in-batch negatives.

InfoNCE (van den Oord et al. 2018, arXiv:1807.03748) as dense retrievers train with it
(Karpukhin et al. 2020, "DPR", arXiv:2004.04906): for a batch of (query, positive passage)
pairs, the score of query i against passage j is the cosine of their unit embeddings
divided by a temperature; the loss is the cross-entropy of picking passage i for query i
among all the batch's passages, so every other pair's passage is a negative. With
temperature 0.05 it is sentence-transformers' MultipleNegativesRankingLoss (scale 20),
the loss all-MiniLM-L6-v2 was trained with.
"""

from __future__ import annotations

import torch

DEFAULT_TEMPERATURE = 0.05


def info_nce(queries: torch.Tensor, passages: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE,
             repeats: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE loss of unit query embeddings [B, d] against their passages [B, d] (row i is i's positive).

    `passages` may hold more rows than `queries` (extra negatives after the B positives).
    `repeats` [B] names the pair each row is (a client with fewer pairs than the batch size
    draws some twice): another copy of row i's own pair is left out of i's negatives.
    """
    if queries.ndim != 2 or passages.ndim != 2 or passages.shape[0] < queries.shape[0]:
        raise ValueError(f"info_nce needs queries [B, d] and passages [>= B, d]; got {tuple(queries.shape)} "
                         f"and {tuple(passages.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores = queries @ passages.T / temperature
    target = torch.arange(queries.shape[0], device=scores.device)
    if repeats is not None:
        rows = repeats.to(scores.device)
        same = rows[:, None] == rows[None, :]
        same.fill_diagonal_(False)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[:, : same.shape[1]] = same
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(scores, target)


def in_batch_correct(queries: torch.Tensor, passages: torch.Tensor) -> int:
    """How many queries score their own passage above every other passage of the batch."""
    scores = queries @ passages.T
    target = torch.arange(queries.shape[0], device=scores.device)
    return int((scores.argmax(dim=1) == target).sum())
