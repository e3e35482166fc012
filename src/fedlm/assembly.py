"""One assembly: from a RunConfig to everything a run needs, for every driver.

The simulation (sim.setup), the coordinator (`fedlm serve`), a client (`fedlm join`) and
the comparison (`fedlm experiment`) all build their run here: the client work `task.kind`
names, the base model on its device, the adapter whose shared parameters are the update,
the privacy plan and the update pipeline. The plan and pipeline are checked on a dummy
layout first (`check_update_path`), so a combination that cannot work fails in a second,
before the model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedlm.config import ConfigError, RunConfig
from fedlm.core.vectors import Spec, make_spec
from fedlm.privacy.plan import PrivacyPlan, make_privacy_plan
from fedlm.updates.build import build_pipeline
from fedlm.updates.pipeline import Pipeline

if TYPE_CHECKING:  # torch, transformers and PEFT load only when a model is assembled
    from fedlm.models.base import BaseModel
    from fedlm.models.lora import Adapter
    from fedlm.work import ClientWork


@dataclass
class Assembly:
    config: RunConfig
    work: ClientWork
    base: BaseModel
    adapter: Adapter
    plan: PrivacyPlan | None
    pipeline: Pipeline


def make_update_path(config: RunConfig, spec: Spec, population: int) -> tuple[PrivacyPlan | None, Pipeline]:
    """The privacy plan for `population` clients and the update pipeline over `spec`, from one config."""
    plan = make_privacy_plan(config.privacy, config.federation, population)
    pipeline = build_pipeline(config.strategy, config.lora, spec, plan, config.compression, config.secagg)
    return plan, pipeline


def check_update_path(config: RunConfig, population: int) -> None:
    """Build the plan and pipeline once on a dummy layout, to refuse bad combinations before the model loads."""
    make_update_path(config, make_spec([("lora_A", (1, 1)), ("lora_B", (1, 1))]), population)
    check_krum_cohort(config, population)


def check_krum_cohort(config: RunConfig, population: int) -> None:
    """Krum needs a cohort of at least 2f + 3, known before any client trains."""
    strategy = config.strategy
    if strategy.aggregator not in ("krum", "multi_krum"):
        return
    if config.federation.sampling != "fixed":
        raise ValueError(f"strategy.aggregator = {strategy.aggregator!r} needs federation.sampling = 'fixed': "
                         "a Poisson cohort can be smaller than Krum's 2f + 3")
    cohort, f = min(config.federation.clients_per_round, population), strategy.num_byzantine
    if cohort < 2 * f + 3:
        raise ValueError(f"strategy.num_byzantine = {f} needs a cohort of at least {2 * f + 3}; "
                         f"federation.clients_per_round gives {cohort}")
    if strategy.krum_selected > cohort - f:
        raise ValueError(f"strategy.krum_selected = {strategy.krum_selected} exceeds cohort - f = {cohort - f}")


def assemble_model(config: RunConfig, work: ClientWork | None = None) -> tuple[ClientWork, BaseModel, Adapter]:
    """The client work, the base model on model.device, and the adapter whose shared parameters are the update."""
    import torch

    from fedlm.models.base import MODEL_BUILDING
    from fedlm.work import make_work

    if config.model.threads:
        torch.set_num_threads(config.model.threads)
    work = work if work is not None else make_work(config)
    with MODEL_BUILDING:  # another thread's model load would turn this adapter's initialisation into a no-op
        base = work.load_base()
        check_context_length(config, base)
        return work, base, work.attach(base)


def check_context_length(config: RunConfig, base: BaseModel) -> None:
    """Refuse a data.seq_len past the base model's context (its config's max_position_embeddings)."""
    limit = getattr(base.model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.data.seq_len > limit:
        raise ConfigError(f"data.seq_len: {config.data.seq_len} tokens is past the context of model "
                          f"{config.model.name!r}, {limit} tokens (max_position_embeddings); set data.seq_len <= {limit}")


def assemble(config: RunConfig, *, population: int, work: ClientWork | None = None) -> Assembly:
    """Client work, base model (on model.device), adapter, privacy plan and pipeline for `population` clients."""
    check_update_path(config, population)
    work, base, adapter = assemble_model(config, work)
    plan, pipeline = make_update_path(config, adapter.shared_spec, population)
    return Assembly(config, work, base, adapter, plan, pipeline)
