"""(query, passage) pairs from a client's own documents: the inverse cloze task.

ICT (Lee et al. 2019, "Latent Retrieval for Weakly Supervised Open Domain Question
Answering", arXiv:1906.00300): a sentence of a passage is the query, the rest of the passage
its positive. With probability `keep_query` the sentence is left in the passage (the paper
keeps it 10 % of the time, so the encoder still learns that word overlap matters). A passage
of one sentence gives no pair (counted, not silent). The draw is seeded per client.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
KEEP_QUERY = 0.1


@dataclass(frozen=True, repr=False)
class QueryPair:
    """A query and the passage that answers it; `source` is the document it came from (an index into the client's)."""

    query: str
    passage: str
    source: int = -1

    def __repr__(self) -> str:  # never the text
        return f"QueryPair(<{len(self.query)} + {len(self.passage)} chars>, source={self.source})"


def split_sentences(text: str) -> list[str]:
    """The passage's sentences: cut after . ! ? or ; and whitespace, blank pieces dropped."""
    return [s.strip() for s in SENTENCE_END.split(text.strip()) if s.strip()]


def ict_pair(text: str, rng: np.random.Generator, *, keep_query: float = KEEP_QUERY, source: int = -1) -> QueryPair | None:
    """One ICT pair from `text`: a random sentence, and the text without it (or with it, at rate keep_query)."""
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return None
    pick = int(rng.integers(len(sentences)))
    keep = bool(rng.random() < keep_query)
    rest = sentences if keep else sentences[:pick] + sentences[pick + 1 :]
    return QueryPair(sentences[pick], " ".join(rest), source)


def ict_pairs(texts: Sequence[str], rng: np.random.Generator, *, keep_query: float = KEEP_QUERY) -> tuple[list[QueryPair], int]:
    """One ICT pair per text of two sentences or more, and how many texts gave none."""
    if not 0.0 <= keep_query <= 1.0:
        raise ValueError(f"keep_query must be in [0, 1], got {keep_query}")
    pairs = [ict_pair(text, rng, keep_query=keep_query, source=i) for i, text in enumerate(texts)]
    kept = [p for p in pairs if p is not None]
    return kept, len(pairs) - len(kept)
