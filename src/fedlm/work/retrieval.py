"""Client work "retrieval": a bi-encoder query encoder trained with InfoNCE on the client's own pairs.

all-MiniLM-L6-v2 with LoRA on its attention's query and value projections embeds queries
and passages alike (one tower, mean-pooled and normalised: fedlm.retrieval.encoder); each
client trains on (query, passage) pairs from its own documents by the inverse cloze task
(fedlm.retrieval.pairs), with the other pairs of a batch as negatives (fedlm.retrieval.infonce).
Only the LoRA update leaves a client: never a document, a query or an embedding of either.

Evaluation is retrieval on each evaluation client's own collection: its held-out documents,
each with one sentence taken out as the query; every document is a candidate, and the
result is the InfoNCE loss over the whole collection, top-1 accuracy, recall@10 and MRR@10.
eval.max_sequences caps the queries of each evaluation client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fedlm.config import RunConfig
from fedlm.core.rng import make_rng
from fedlm.data.redaction import redact_client, redact_federation
from fedlm.data.types import FederatedDataset, Sample
from fedlm.eval.metrics import EvalResult
from fedlm.retrieval.batches import PairBatch, PairSet, cut_row, pad_rows, tokenize_pairs
from fedlm.retrieval.encoder import embed_tokens, load_encoder
from fedlm.retrieval.infonce import info_nce
from fedlm.retrieval.pairs import ict_pairs
from fedlm.retrieval.ranking import gold_ranks, score_ranks
from fedlm.work.causal_lm import check_texts
from fedlm.work.language_model import load_configured_federation
from fedlm.work.protocol import Encoded


def texts_digest(texts: Sequence[str]) -> int:
    """A 63-bit key of a client's texts: seeds its pair draw without knowing its id (encode gets none)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return int.from_bytes(digest.digest()[:8], "little") >> 1


@dataclass(frozen=True, repr=False)
class Collection:
    """One evaluation client's collection: its query rows, its document rows, and each query's document."""

    queries: tuple[tuple[int, ...], ...]
    documents: tuple[tuple[int, ...], ...]
    gold: tuple[int, ...]

    def __repr__(self) -> str:
        return f"Collection(<{len(self.queries)} queries over {len(self.documents)} documents>)"


@dataclass(frozen=True)
class CollectionEvalSet:
    """The evaluation clients' collections (in client order); what `evaluate` scores."""

    collections: tuple[Collection, ...]
    pad_id: int
    questions: tuple = ()
    truncated: int = 0
    dropped: int = 0

    def counts(self) -> dict[str, int]:
        return {"collections": len(self.collections), "queries": sum(len(c.queries) for c in self.collections),
                "documents": sum(len(c.documents) for c in self.collections), "truncated": self.truncated,
                "dropped": self.dropped}


def load_text_federation(work: Any, embedded) -> FederatedDataset:
    """The plays, one client per play (or a folder of text files), redacted as [redaction] says."""
    from fedlm.data.plays import load_plays_by_play

    config = work.config

    def plays(**kw: Any) -> FederatedDataset:
        dataset = load_plays_by_play(test_fraction=kw["test_fraction"], seed=kw["seed"],
                                     min_chars=config.retrieval.min_chars)
        return redact_federation(embedded(dataset), config.redaction, source=config.data.source)

    return load_configured_federation(work, plays)


@torch.no_grad()
def embed_rows(model: torch.nn.Module, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """Unit embeddings [len(rows), dim] of token rows, in batches of rows of similar length."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    out: torch.Tensor | None = None
    for start in range(0, len(rows), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad_rows([rows[i] for i in chunk], pad_id)
        vectors = embed_tokens(model, ids, mask).float().cpu()
        if out is None:
            out = torch.empty((len(rows), vectors.shape[1]))
        out[torch.as_tensor(chunk)] = vectors
    return out if out is not None else torch.empty((0, 0))


def score_collection(model: torch.nn.Module, collection: Collection, pad_id: int, *, batch_size: int,
                     temperature: float) -> EvalResult:
    """InfoNCE over every document of the collection, top-1 hits, and recall@10 / MRR@10 of its queries."""
    if not collection.queries:
        return EvalResult()
    documents = embed_rows(model, collection.documents, pad_id, batch_size)
    queries = embed_rows(model, collection.queries, pad_id, batch_size)
    scores = queries @ documents.T
    gold = torch.as_tensor(collection.gold)
    loss = torch.nn.functional.cross_entropy(scores / temperature, gold, reduction="sum")
    ranks = gold_ranks(scores.numpy(), np.asarray(collection.gold))
    return EvalResult(float(loss), len(gold), int((ranks == 1).sum()), ranking=score_ranks(ranks))


def contrastive_loss(model: torch.nn.Module, batch: PairBatch, temperature: float) -> torch.Tensor:
    """InfoNCE of the batch's queries against its passages; a pair drawn twice is not its own negative."""
    queries = embed_tokens(model, batch.query_ids, batch.query_mask)
    passages = embed_tokens(model, batch.passage_ids, batch.passage_mask)
    return info_nce(queries, passages, temperature, repeats=batch.rows)


@dataclass(frozen=True)
class RetrievalWork:
    kind: ClassVar[str] = "retrieval"
    encodes_up_front: ClassVar[bool] = True  # a client without a two-sentence document is refused before round 1
    config: RunConfig

    def load_base(self) -> Any:
        model = self.config.model
        return load_encoder(model.name, device=model.device, dtype=model.dtype)

    def load_federation(self) -> FederatedDataset:
        return load_text_federation(self, lambda dataset: dataset)

    def load_folder(self, path: Path, *, test_fraction: float, seed: int) -> FederatedDataset:
        from fedlm.data.folders import load_folder

        dataset = load_folder(Path(path), test_fraction=test_fraction, seed=seed, encoding=self.config.data.encoding)
        return redact_federation(dataset, self.config.redaction, source="folder")

    def read_client(self, path: Path) -> list[Sample]:
        from fedlm.data.folders import read_client_samples

        return redact_client(read_client_samples(Path(path), encoding=self.config.data.encoding), self.config.redaction)

    def encode(self, tokenizer: Any, samples: Sequence[Sample]) -> Encoded:
        """One inverse-cloze pair per document of two sentences or more (the others are counted as dropped)."""
        texts = check_texts(samples, self.kind)
        pair_set, cut, dropped = self.draw_pairs(tokenizer, texts)
        return Encoded(pair_set, len(texts), truncated=cut, dropped=dropped)

    def draw_pairs(self, tokenizer: Any, texts: Sequence[str]) -> tuple[PairSet, int, int]:
        """The client's inverse-cloze pairs, tokenized; how many were cut, and how many documents gave none.

        The pairs are drawn once per client and run, from its texts and the run seed: each
        round's batches are fresh permutations of them (Lee et al. redraw a query each time
        a document is visited; a fixed draw keeps a client's updates reproducible).
        """
        settings = self.config.retrieval
        rng = make_rng(self.config.run.seed, "ict", texts_digest(texts))
        pairs, dropped = ict_pairs(texts, rng, keep_query=settings.keep_query)
        if not pairs:
            raise ValueError(f"task.kind = {self.kind!r}: none of the client's {len(texts)} documents has two sentences "
                             "or more, so the inverse cloze task makes no (query, passage) pair to train on")
        pair_set, cut = tokenize_pairs(tokenizer, [p.query for p in pairs], [p.passage for p in pairs],
                                       query_length=settings.query_len, passage_length=self.config.data.seq_len,
                                       sources=[p.source for p in pairs])
        return pair_set, cut, dropped

    def make_eval_set(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]], *, max_sequences: int) -> CollectionEvalSet:
        collections, cut, dropped = [], 0, 0
        for client in samples:
            collection, client_cut, client_dropped = self.collection(tokenizer, client, samples[client], max_sequences)
            collections.append(collection)
            cut, dropped = cut + client_cut, dropped + client_dropped
        return CollectionEvalSet(tuple(collections), int(tokenizer.pad_token_id), truncated=cut, dropped=dropped)

    def collection(self, tokenizer: Any, client: str, samples: Sequence[Sample], max_queries: int) -> tuple[Collection, int, int]:
        """The client's documents, the first `max_queries` of them with a sentence out as the query (never kept)."""
        texts = check_texts(samples, self.kind)
        pairs, single = ict_pairs(texts, make_rng(self.config.run.seed, "ict-eval", client), keep_query=0.0)
        pairs = pairs[: max(max_queries, 0)]
        documents = list(texts)
        for pair in pairs:
            documents[pair.source] = pair.passage
        settings, seq_len = self.config.retrieval, self.config.data.seq_len
        query_rows = tokenizer([p.query for p in pairs], truncation=False, verbose=False)["input_ids"] if pairs else []
        document_rows = tokenizer(documents, truncation=False, verbose=False)["input_ids"] if documents else []
        cut = sum(len(r) > settings.query_len for r in query_rows) + sum(len(r) > seq_len for r in document_rows)
        collection = Collection(tuple(tuple(cut_row(r, settings.query_len)) for r in query_rows),
                                tuple(tuple(cut_row(r, seq_len)) for r in document_rows),
                                tuple(p.source for p in pairs))
        return collection, cut, single

    def questions(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]]) -> tuple:
        return ()

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
        return contrastive_loss(model, batch, self.config.retrieval.temperature)

    def evaluate(self, model: torch.nn.Module, eval_set: Any) -> EvalResult:
        """Every evaluation client's collection scored by `score`, summed; the model left in the mode it was in."""
        total = EvalResult()
        was_training = model.training
        model.eval()
        for collection in eval_set.collections:
            total = total + self.score(model, collection, eval_set.pad_id)
        model.train(was_training)
        return total

    def score(self, model: torch.nn.Module, collection: Collection, pad_id: int) -> EvalResult:
        return score_collection(model, collection, pad_id, batch_size=self.config.eval.batch_size,
                                temperature=self.config.retrieval.temperature)

    def attach(self, base: Any) -> Any:
        from fedlm.models.lora import attach_lora

        return attach_lora(base, self.config.lora, seed=self.config.run.seed, task_type="FEATURE_EXTRACTION")


__all__ = ["CollectionEvalSet", "PairSet", "RetrievalWork"]
