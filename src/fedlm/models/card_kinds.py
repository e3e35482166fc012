"""What a model card says per task kind: the transformers class its base loads with, the Hub's pipeline tag,
and the head arguments of the kinds with a head (rerank: one score; classify: the run's labels)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedlm.models.card import RunFacts

# How each kind's base model loads (transformers class) and what the Hub calls its pipeline.
LOADERS = {"retrieval": ("AutoModel", "feature-extraction"), "rerank": ("AutoModelForSequenceClassification", "text-classification"),
           "classify": ("AutoModelForSequenceClassification", "text-classification")}
CAUSAL = ("AutoModelForCausalLM", "text-generation")


def loader(facts: RunFacts) -> tuple[str, str]:
    """(transformers class, Hub pipeline tag) of the run's task kind."""
    return LOADERS.get(config_section(facts.config, "task").get("kind", "causal_lm"), CAUSAL)


def head_arguments(facts: RunFacts) -> str:
    """from_pretrained's head arguments for the kinds with a head: one score (rerank), or the run's labels (classify)."""
    kind = config_section(facts.config, "task").get("kind")
    if kind == "rerank":
        return ", num_labels=1"
    labels = facts.summary.get("labels") or config_section(facts.config, "retrieval").get("labels") or ()
    if kind == "classify" and labels:
        return f", num_labels={len(labels)}, id2label={json.dumps(dict(enumerate(labels)))}"
    return ""


# Per kind: what the evaluation figures mean, and the per-round figure a reader judges a run by.
LANGUAGE_TERMS = ("loss in nats per token; accuracy: next-token", "perplexity", "held-out perplexity")
EVAL_TERMS = {
    "retrieval": ("loss: InfoNCE over each evaluation client's own collection; accuracy: top-1; recall@10 and MRR@10 "
                  "of the document each query was taken from", "recall_at_10", "held-out recall@10"),
    "rerank": ("loss: listwise cross-entropy over the first stage's candidates; accuracy: top-1 after reranking; "
               "recall@10 and MRR@10 of the reranked list", "recall_at_10", "held-out recall@10"),
    "classify": ("loss: cross-entropy per sample; accuracy: of the label", "accuracy", "held-out accuracy"),
}


def eval_terms(facts: RunFacts) -> tuple[str, str, str]:
    """(what the figures mean, the per-round headline's key, its column title) for the run's task kind."""
    return EVAL_TERMS.get(config_section(facts.config, "task").get("kind", "causal_lm"), LANGUAGE_TERMS)


def config_section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    return value if isinstance(value, Mapping) else {}
