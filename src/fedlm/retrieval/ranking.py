"""Ranking metrics: recall@k and MRR@k (mean reciprocal rank cut at k), summable over clients.

recall@k is the share of queries whose relevant passage is among the top k; MRR@k is the
mean of 1/rank of the relevant passage, 0 when it is ranked past k (as MS MARCO reports
MRR@10). Each query has exactly one relevant passage here (the inverse cloze task's source,
or the pair's passage), so recall@k is also hit rate@k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K = 10  # the cut-off every table reports


@dataclass(frozen=True)
class RankingScore:
    """Sums over queries: hits in the top K and reciprocal ranks (0 past K); divide by `queries`."""

    queries: int = 0
    hits: int = 0
    reciprocal_sum: float = 0.0
    k: int = K

    def __add__(self, other: RankingScore) -> RankingScore:
        if self.queries and other.queries and self.k != other.k:
            raise ValueError(f"cannot add ranking scores at k = {self.k} and k = {other.k}")
        k = self.k if self.queries else other.k
        return RankingScore(self.queries + other.queries, self.hits + other.hits,
                            self.reciprocal_sum + other.reciprocal_sum, k)

    @property
    def recall(self) -> float:
        return self.hits / self.queries if self.queries else float("nan")

    @property
    def mrr(self) -> float:
        return self.reciprocal_sum / self.queries if self.queries else float("nan")


def gold_ranks(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """The 1-based rank of each query's gold column in its row of `scores` [queries, passages] (ties rank worst)."""
    gold_scores = scores[np.arange(len(gold)), gold]
    return (scores >= gold_scores[:, None]).sum(axis=1)


def score_ranks(ranks: np.ndarray, k: int = K) -> RankingScore:
    """Recall@k and MRR@k sums from 1-based ranks (rank <= 0 means not retrieved at all)."""
    ranks = np.asarray(ranks)
    found = (ranks >= 1) & (ranks <= k)
    return RankingScore(int(len(ranks)), int(found.sum()), float((1.0 / ranks[found]).sum()), k)


def score_retrieved(retrieved: np.ndarray, gold: np.ndarray, k: int = K) -> RankingScore:
    """Recall@k and MRR@k sums from retrieved ids [queries, >= k] in rank order and each query's gold id."""
    top = np.asarray(retrieved)[:, :k]
    match = top == np.asarray(gold)[:, None]
    ranks = np.where(match.any(axis=1), match.argmax(axis=1) + 1, 0)
    return score_ranks(ranks, k)
