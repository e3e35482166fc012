"""Kinds of client work, by `task.kind`: adding one is a module here and a line in KINDS (and config.TASK_KINDS)."""

from __future__ import annotations

from fedlm.config import RunConfig
from fedlm.work.causal_lm import CausalLmWork
from fedlm.work.classify import ClassifyWork
from fedlm.work.instruction import InstructionWork
from fedlm.work.protocol import ClientWork, Encoded, EvalSet
from fedlm.work.rerank import RerankWork
from fedlm.work.retrieval import RetrievalWork

KINDS: dict[str, type] = {  # tests check: == config.TASK_KINDS
    "causal_lm": CausalLmWork, "instruction": InstructionWork, "retrieval": RetrievalWork, "rerank": RerankWork,
    "classify": ClassifyWork,
}


def make_work(config: RunConfig) -> ClientWork:
    """The client work `task.kind` names, over the run's settings."""
    return KINDS[config.task.kind](config)


__all__ = ["ClientWork", "Encoded", "EvalSet", "KINDS", "make_work"]
