"""Build the checked update pipeline from the run's [strategy] and [lora] settings."""

from __future__ import annotations

from fedlm.aggregation.server_opt import ServerOptimizer
from fedlm.config import LoraSettings, StrategySettings
from fedlm.core.vectors import Spec
from fedlm.updates.pipeline import Pipeline, PipelineError, Stage, Step, make_pipeline


def make_server_optimizer(strategy: StrategySettings) -> ServerOptimizer:
    return ServerOptimizer(
        name=strategy.server_optimizer, lr=strategy.server_lr, momentum=strategy.server_momentum,
        beta1=strategy.server_beta1, beta2=strategy.server_beta2, tau=strategy.server_tau,
    )


def aggregator_step(strategy: StrategySettings, lora: LoraSettings) -> Step:
    if lora.aggregation == "svd":
        if strategy.aggregator != "mean":
            raise PipelineError(
                f"strategy.aggregator = {strategy.aggregator!r} cannot be combined with lora.aggregation = 'svd':"
                " svd is itself the aggregator (the exact mean of B.A); use strategy.aggregator = 'mean'"
            )
        return Step("lora_svd", Stage.AGGREGATE, summable=False, params=(("rank", lora.r),))
    if strategy.aggregator == "mean":
        return Step("mean", Stage.AGGREGATE)
    params = {
        "median": (),
        "trimmed_mean": (("trim_fraction", strategy.trim_fraction),),
        "krum": (("num_byzantine", strategy.num_byzantine),),
        "multi_krum": (("num_byzantine", strategy.num_byzantine), ("num_selected", strategy.krum_selected)),
    }[strategy.aggregator]
    return Step(strategy.aggregator, Stage.AGGREGATE, summable=False, params=params)


def build_pipeline(strategy: StrategySettings, lora: LoraSettings, spec: Spec) -> Pipeline:
    """The chain: [clip] => [norm bound] => aggregator -> server optimizer; checked on the way."""
    steps: list[Step] = []
    if strategy.clip_norm > 0:
        steps.append(Step("clip", Stage.CLIP, params=(("clip_norm", strategy.clip_norm),)))
    if strategy.norm_bound > 0:
        steps.append(Step("norm_bound", Stage.INGRESS, summable=False, params=(("max_norm", strategy.norm_bound),)))
    steps.append(aggregator_step(strategy, lora))
    return make_pipeline(tuple(steps), make_server_optimizer(strategy), weighting=strategy.weighting, spec=spec)
