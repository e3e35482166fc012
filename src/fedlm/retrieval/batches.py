"""Tokenized (query, passage) pairs as the batches a client trains on.

The trainer (fedlm.client.train) asks a batch source for its length, `take(rows)` and
`num_tokens`, as it does of token blocks; pairs keep their token ids unpadded and are
padded to the longest of a batch when taken, so short queries cost no padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of token rows, padded on the right to the longest."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


@dataclass(frozen=True, repr=False)
class PairBatch:
    """A batch of pairs: queries and passages as padded input_ids and attention masks."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    passage_ids: torch.Tensor
    passage_mask: torch.Tensor
    rows: torch.Tensor | None = None  # which pair of the client's set each row is

    def __len__(self) -> int:
        return int(self.query_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.query_mask.sum() + self.passage_mask.sum())

    def __repr__(self) -> str:
        return f"PairBatch(<{len(self)} pairs>)"


@dataclass(frozen=True, repr=False)
class PairSet:
    """Token ids of (query, passage) pairs; `sources` says which client document each passage came from."""

    queries: tuple[tuple[int, ...], ...]
    passages: tuple[tuple[int, ...], ...]
    pad_id: int
    sources: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def num_tokens(self) -> int:
        return sum(map(len, self.queries)) + sum(map(len, self.passages))

    def take(self, index: Sequence[int] | np.ndarray) -> PairBatch:
        rows = [int(i) for i in np.asarray(index, dtype=np.int64)]
        query_ids, query_mask = pad_rows([self.queries[i] for i in rows], self.pad_id)
        passage_ids, passage_mask = pad_rows([self.passages[i] for i in rows], self.pad_id)
        return PairBatch(query_ids, query_mask, passage_ids, passage_mask, torch.as_tensor(rows, dtype=torch.long))

    def head(self, n: int) -> PairBatch:
        return self.take(range(min(n, len(self))))

    def __repr__(self) -> str:
        return f"PairSet(<{len(self)} pairs>)"


def tokenize_pairs(tokenizer, queries: Sequence[str], passages: Sequence[str], *, query_length: int,
                   passage_length: int, sources: Sequence[int] = ()) -> tuple[PairSet, int]:
    """The pairs' token ids, queries cut at `query_length` and passages at `passage_length`; and how many were cut."""
    q = tokenizer(list(queries), truncation=False, verbose=False)["input_ids"] if queries else []
    p = tokenizer(list(passages), truncation=False, verbose=False)["input_ids"] if passages else []
    cut = sum(len(a) > query_length or len(b) > passage_length for a, b in zip(q, p, strict=True))
    pairs = PairSet(tuple(tuple(cut_row(a, query_length)) for a in q), tuple(tuple(cut_row(b, passage_length)) for b in p),
                    int(tokenizer.pad_token_id), tuple(sources))
    return pairs, cut


def cut_row(ids: Sequence[int], length: int) -> list[int]:
    """The first `length` - 1 tokens and the row's last one (its [SEP]), so a cut row still ends as the encoder expects."""
    return list(ids) if len(ids) <= length else list(ids[: length - 1]) + [ids[-1]]
