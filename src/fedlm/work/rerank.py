"""Client work "rerank": a cross-encoder trained on the client's own lists of hard negatives.

The encoder with a one-output linear head (fedlm.retrieval.rerank) scores a (query, passage)
pair; LoRA on its attention and the whole head train, and both travel in the update (PEFT's
SEQ_CLS task puts the head in modules_to_save). Each client's lists come from its own
documents: the inverse-cloze pairs of the "retrieval" kind (the same draw), each with
`retrieval.negatives` hard negatives mined from the client's own collection by the base
bi-encoder (no LoRA), among its top `retrieval.candidates`; the loss is the listwise softmax
cross-entropy of the positive against them. Only the update leaves a client: never a
document, a query, an embedding or a mined list.

Evaluation is the two-stage pipeline on each evaluation client's own collection (the
"retrieval" kind's, fedlm.work.retrieval): the base bi-encoder retrieves the top
`retrieval.candidates` for each query, the cross-encoder reorders them, and the result is
recall@10 and MRR@10 of the reordered list, top-1 accuracy, and the listwise loss of the
query's gold document against the candidates (the gold added to the list when the first
stage missed it, so that the loss is always defined; the ranking figures count it missed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fedlm.core.rng import make_rng
from fedlm.data.types import Sample
from fedlm.eval.metrics import EvalResult
from fedlm.retrieval.batches import cut_row
from fedlm.retrieval.encoder import load_encoder
from fedlm.retrieval.ranking import score_retrieved
from fedlm.retrieval.rerank import (
    ListBatch, ListSet, PairRows, base_encoder, check_pair_template, join_pair, listwise_loss, mine_negatives,
    rerank_loss, score_pair_rows, top_candidates,
)
from fedlm.work.causal_lm import check_texts
from fedlm.work.protocol import Encoded
from fedlm.work.retrieval import Collection, RetrievalWork, embed_rows, texts_digest

MINING_BATCH = 64  # rows the base encoder embeds at a time when mining


def build_lists(queries: Sequence[Sequence[int]], positives: Sequence[Sequence[int]], documents: Sequence[Sequence[int]],
                negatives: np.ndarray, *, length: int) -> tuple[PairRows, np.ndarray]:
    """Cross-encoder rows of each query with its positive, then its negatives' documents; slots [queries, 1 + n]."""
    rows, slots = [], np.full((len(queries), 1 + negatives.shape[1]), -1, dtype=np.int64)
    for i, (query, positive) in enumerate(zip(queries, positives, strict=True)):
        slots[i, 0] = len(rows)
        rows.append(join_pair(query, positive, length))
        for j, document in enumerate(negatives[i]):
            if document >= 0:
                slots[i, 1 + j] = len(rows)
                rows.append(join_pair(query, documents[document], length))
    return PairRows.build(rows), slots


@dataclass(frozen=True, repr=False)
class RerankCollection:
    """One evaluation client's queries, each with its first-stage candidates (and its gold, where they missed it).

    Row slots[q, c] scores candidate documents[q, c]; the last column is the gold document
    when the first stage did not retrieve it (-1 otherwise); gold_column[q] is where the gold is.
    """

    rows: PairRows
    slots: np.ndarray  # [queries, candidates + 1]
    documents: np.ndarray  # [queries, candidates + 1] document ids (-1: none)
    gold: np.ndarray  # [queries] document ids
    gold_column: np.ndarray  # [queries]

    def __repr__(self) -> str:
        return f"RerankCollection(<{len(self.gold)} queries, {self.slots.shape[1] - 1} candidates each>)"


@dataclass(frozen=True)
class RerankEvalSet:
    """The evaluation clients' candidate lists (in client order); what `evaluate` scores."""

    collections: tuple[RerankCollection, ...]
    pad_id: int
    questions: tuple = ()
    truncated: int = 0
    dropped: int = 0

    def counts(self) -> dict[str, int]:
        return {"collections": len(self.collections), "queries": sum(len(c.gold) for c in self.collections),
                "candidates": sum(int((c.slots >= 0).sum()) for c in self.collections), "truncated": self.truncated,
                "dropped": self.dropped}


def candidate_lists(collection: Collection, encoder: Any, pad_id: int, *, candidates: int,
                    length: int) -> RerankCollection:
    """The first stage on one collection: each query's top `candidates` documents under the base bi-encoder."""
    if not collection.queries:
        empty = np.empty((0, candidates + 1), np.int64)
        return RerankCollection(PairRows.build([]), empty, empty, np.empty(0, np.int64), np.empty(0, np.int64))
    queries = embed_rows(encoder, collection.queries, pad_id, MINING_BATCH).numpy()
    documents = embed_rows(encoder, collection.documents, pad_id, MINING_BATCH).numpy()
    gold = np.asarray(collection.gold, dtype=np.int64)
    top = top_candidates(queries, documents, candidates)  # [Q, C]
    missed = np.where((top == gold[:, None]).any(axis=1), -1, gold)
    listed = np.concatenate([top, missed[:, None]], axis=1)
    gold_column = (listed == gold[:, None]).argmax(axis=1)
    rows, slots = [], np.full(listed.shape, -1, dtype=np.int64)
    for q, query in enumerate(collection.queries):
        for c, document in enumerate(listed[q]):
            if document >= 0:
                slots[q, c] = len(rows)
                rows.append(join_pair(query, collection.documents[document], length))
    return RerankCollection(PairRows.build(rows), slots, listed, gold, gold_column)


def score_lists(model: torch.nn.Module, collection: RerankCollection, pad_id: int, *, batch_size: int) -> EvalResult:
    """Listwise loss of the gold, top-1 hits, and recall@10 / MRR@10 of the reranked first-stage candidates."""
    if not len(collection.gold):
        return EvalResult()
    scores = score_pair_rows(model, collection.rows, pad_id, batch_size=batch_size)
    matrix = np.where(collection.slots >= 0, scores[collection.slots.clip(min=0)], -np.inf).astype(np.float32)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(matrix), torch.from_numpy(collection.gold_column),
                                             reduction="sum")
    retrieved = matrix[:, :-1]  # the first stage's candidates only: a gold it missed stays missed
    order = np.argsort(-retrieved, axis=1, kind="stable")
    reranked = np.take_along_axis(collection.documents[:, :-1], order, axis=1)
    top1 = int((reranked[:, 0] == collection.gold).sum())
    return EvalResult(float(loss), len(collection.gold), top1, ranking=score_retrieved(reranked, collection.gold))


@dataclass(frozen=True)
class RerankWork(RetrievalWork):
    """The "retrieval" kind's data and collections, a cross-encoder's lists, loss and evaluation."""

    kind: ClassVar[str] = "rerank"
    encodes_up_front: ClassVar[bool] = False  # lists are built when a client trains; short documents are counted

    def load_base(self) -> Any:
        model = self.config.model
        return load_encoder(model.name, device=model.device, dtype=model.dtype, num_labels=1)

    def miner(self) -> Any:
        """The base bi-encoder that mines negatives and retrieves the first stage (loaded once per process)."""
        model = self.config.model
        return base_encoder(model.name, model.device, model.dtype)

    def encode(self, tokenizer: Any, samples: Sequence[Sample]) -> Encoded:
        """One list per inverse-cloze pair: the pair's passage, then negatives mined from the client's documents."""
        check_pair_template(tokenizer)
        texts = check_texts(samples, self.kind)
        settings, seq_len, seed = self.config.retrieval, self.config.data.seq_len, self.config.run.seed
        key = texts_digest(texts)
        pair_set, cut, dropped = self.draw_pairs(tokenizer, texts)  # refuses a client with no pair
        pad_id = int(tokenizer.pad_token_id)
        documents = [cut_row(r, seq_len) for r in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        encoder = self.miner().model
        negatives = mine_negatives(embed_rows(encoder, pair_set.queries, pad_id, MINING_BATCH).numpy(),
                                   embed_rows(encoder, documents, pad_id, MINING_BATCH).numpy(), pair_set.sources,
                                   negatives=settings.negatives, candidates=settings.candidates,
                                   rng=make_rng(seed, "rerank-negatives", key))
        rows, slots = build_lists(pair_set.queries, pair_set.passages, documents, negatives, length=seq_len)
        return Encoded(ListSet(rows, slots, pad_id), len(texts), truncated=cut, dropped=dropped)

    def make_eval_set(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]], *,
                      max_sequences: int) -> RerankEvalSet:
        check_pair_template(tokenizer)
        pad_id, encoder = int(tokenizer.pad_token_id), self.miner().model
        collections, cut, dropped = [], 0, 0
        for client in samples:
            collection, client_cut, client_dropped = self.collection(tokenizer, client, samples[client], max_sequences)
            collections.append(candidate_lists(collection, encoder, pad_id, candidates=self.config.retrieval.candidates,
                                               length=self.config.data.seq_len))
            cut, dropped = cut + client_cut, dropped + client_dropped
        return RerankEvalSet(tuple(collections), pad_id, truncated=cut, dropped=dropped)

    def loss(self, model: torch.nn.Module, batch: ListBatch) -> torch.Tensor:
        return rerank_loss(model, batch)

    def score(self, model: torch.nn.Module, collection: RerankCollection, pad_id: int) -> EvalResult:
        """One client's first-stage candidates reordered by the cross-encoder (RetrievalWork.evaluate sums them)."""
        return score_lists(model, collection, pad_id, batch_size=self.config.eval.batch_size)

    def attach(self, base: Any) -> Any:
        from fedlm.models.lora import attach_lora

        return attach_lora(base, self.config.lora, seed=self.config.run.seed, task_type="SEQ_CLS")


__all__ = ["ListSet", "RerankEvalSet", "RerankWork", "listwise_loss"]
