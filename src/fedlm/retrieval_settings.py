"""The [retrieval] table: what the encoder kinds of client work (retrieval, rerank, classify) train with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedlm.model_settings import ENCODER_KINDS, ENCODER_MODEL, ENCODER_TARGETS, ModelSettings
from fedlm.settings_checks import require

if TYPE_CHECKING:
    from fedlm.config import RunConfig


@dataclass(frozen=True)
class RetrievalSettings:
    temperature: float = 0.05  # InfoNCE's softmax temperature over cosine scores (0.05 = sentence-transformers' scale 20)
    query_len: int = 64  # tokens of a query (longer ones are cut in training; `fedlm rag query` refuses them)
    keep_query: float = 0.1  # inverse cloze task: how often the query sentence stays in its passage (Lee et al.: 0.1)
    min_chars: int = 80  # the embedded plays: speeches shorter than this are no document
    negatives: int = 3  # rerank: negatives per query, mined from the client's own index with the base encoder
    candidates: int = 20  # rerank / `fedlm rag query`: how many the encoder retrieves for the reranker to reorder
    labels: tuple[str, ...] = ()  # classify: the label set, in head order; () derives it (the plays' genres, the folder's)

    def __post_init__(self) -> None:
        require(0 < self.temperature <= 10, "retrieval.temperature", "must be in (0, 10]")
        require(4 <= self.query_len <= 512, "retrieval.query_len", "must be in [4, 512]")
        require(0 <= self.keep_query <= 1, "retrieval.keep_query", "must be in [0, 1]")
        require(self.min_chars >= 1, "retrieval.min_chars", "must be >= 1")
        require(1 <= self.negatives <= 64, "retrieval.negatives", "must be in [1, 64]")
        require(self.candidates > self.negatives, "retrieval.candidates", "must exceed retrieval.negatives")
        require(len(set(self.labels)) == len(self.labels) and all(self.labels), "retrieval.labels",
                "must be distinct, non-empty names")
        require(len(self.labels) != 1, "retrieval.labels", "needs at least two labels (or none, to derive them)")


def encoder_defaults(config: RunConfig) -> dict[str, Any]:
    """For the encoder kinds, the LLM defaults of model.name and lora.target_modules mean MiniLM and its query/value."""
    from fedlm.config import LoraSettings  # config imports this module

    if config.task.kind not in ENCODER_KINDS:
        return {}
    changed: dict[str, Any] = {}
    if config.model.name == ModelSettings().name:
        changed["model"] = dataclasses.replace(config.model, name=ENCODER_MODEL)
    if config.lora.target_modules == LoraSettings().target_modules:
        changed["lora"] = dataclasses.replace(config.lora, target_modules=ENCODER_TARGETS)
    return changed
