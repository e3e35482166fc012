"""Build the checked update pipeline from the run's [strategy] and [lora] settings."""

from __future__ import annotations

from fedlm.aggregation.server_opt import ServerOptimizer
from fedlm.config import CompressionSettings, LoraSettings, SecAggSettings, StrategySettings
from fedlm.core.vectors import Spec
from fedlm.privacy.accountant import update_noise_for
from fedlm.privacy.plan import PrivacyPlan
from fedlm.updates.pipeline import CORRELATED_NOISE, SHARED_QUANTIZE, Pipeline, PipelineError, Stage, Step, make_pipeline


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


def update_noise_multiplier(plan: PrivacyPlan) -> float:
    """The noise multiplier applied to the update sum: all of z, less what adaptive clipping's count takes."""
    if not plan.adaptive_clip:
        return plan.noise_multiplier
    return update_noise_for(plan.noise_multiplier, plan.count_noise)


def privacy_steps(plan: PrivacyPlan | None) -> tuple[list[Step], list[Step]]:
    """(client steps, server steps after the sum) for user-level DP-FedAvg."""
    if plan is None:
        return [], []
    if plan.correlated:  # banded MF-DP-FTRL: std s sigma C on the sum before correlation, C^-1 Z across rounds
        z = (("noise_multiplier", plan.sum_noise_multiplier), ("expected_cohort", plan.expected_cohort))
        return [], [Step(CORRELATED_NOISE, Stage.CENTRAL_NOISE, params=z)]
    z = (("noise_multiplier", update_noise_multiplier(plan)), ("expected_cohort", plan.expected_cohort))
    if plan.placement == "distributed":
        return [Step("noise_share", Stage.NOISE_SHARE, params=z)], []
    return [], [Step("central_noise", Stage.CENTRAL_NOISE, params=z)]


def resolved_scale(compression: CompressionSettings, privacy: PrivacyPlan | None, secagg: SecAggSettings | None) -> str:
    """compression.scale with "auto" decided: the shared grid under DP or SecAgg, a scale per chunk otherwise."""
    if compression.scale != "auto":
        return compression.scale
    return "shared" if privacy is not None or (secagg is not None and secagg.enabled) else "chunk"


def compression_steps(compression: CompressionSettings, scale: str = "chunk") -> list[Step]:
    """Sparsify, then quantize what is kept. A random mask is the same for the whole cohort, so
    masked updates still sum coordinate-wise; top-k and per-client quantization scales are not sums,
    codes on the cohort's shared grid are (unless each client rotates with its own signs)."""
    steps = []
    if compression.sparsify == "random":
        steps.append(Step("random_mask", Stage.SPARSIFY, params=(("fraction", compression.fraction),)))
    elif compression.sparsify == "top_k":
        steps.append(Step("top_k", Stage.SPARSIFY, summable=False, params=(("fraction", compression.fraction),)))
    if compression.quantize_bits and scale == "shared":
        params = (("bits", compression.quantize_bits), ("rotate", float(compression.rotate)),
                  ("spread", compression.shared_range))
        steps.append(Step(SHARED_QUANTIZE, Stage.QUANTIZE, summable=not compression.rotate, params=params))
    elif compression.quantize_bits:
        params = (("bits", compression.quantize_bits), ("chunk", compression.chunk), ("rotate", float(compression.rotate)))
        steps.append(Step("quantize", Stage.QUANTIZE, summable=False, params=params))
    return steps


def check_compression(compression: CompressionSettings, strategy: StrategySettings, privacy: PrivacyPlan | None,
                      secagg: SecAggSettings | None) -> None:
    """Raise PipelineError, naming both settings, for quantization that DP or SecAgg cannot take."""
    if not compression.quantize_bits:
        return
    bits, secure = compression.quantize_bits, secagg is not None and secagg.enabled
    shared = resolved_scale(compression, privacy, secagg) == "shared"
    if privacy is not None and not shared:
        raise PipelineError(
            f"compression.quantize_bits = {bits} with compression.scale = 'chunk' cannot be combined with differential"
            f" privacy (privacy.noise_multiplier = {privacy.noise_multiplier:g}): a client's own scale lets rounding push"
            " its update past strategy.clip_norm, which the noise is calibrated to; set compression.scale = 'shared'")
    if secure and not shared:
        raise PipelineError(
            f"compression.quantize_bits = {bits} with compression.scale = 'chunk' cannot be combined with secagg.enabled:"
            " codes on each client's own scales do not sum; set compression.scale = 'shared'")
    if not shared:
        return
    if privacy is not None and privacy.placement == "distributed":
        raise PipelineError(
            f"compression.quantize_bits = {bits} cannot be combined with privacy.placement = 'distributed': each noise"
            " share would be rounded with its update, so the sum would no longer carry the Gaussian noise the"
            " accountant counts (that takes the distributed discrete Gaussian of Kairouz et al. 2021); use"
            " privacy.placement = 'central' or compression.quantize_bits = 0")
    if strategy.clip_norm <= 0:
        raise PipelineError("compression.scale = 'shared' needs strategy.clip_norm > 0: the cohort's grid is derived from it")
    if compression.sparsify != "none":
        raise PipelineError(
            f"compression.sparsify = {compression.sparsify!r} cannot be combined with compression.quantize_bits under"
            " differential privacy or secure aggregation: the shared grid (compression.scale) bounds the whole update")
    if secure and compression.rotate:
        raise PipelineError(
            "compression.rotate cannot be combined with secagg.enabled: each client rotates with its own signs, so the"
            " server could not unrotate the masked sum; set compression.rotate = false")


def secagg_steps(secagg: SecAggSettings | None) -> tuple[list[Step], list[Step]]:
    """(client mask step, server unmask step) when secure aggregation is on."""
    if secagg is None or not secagg.enabled:
        return [], []
    params = (("neighbours", secagg.neighbours), ("threshold", secagg.threshold))
    return [Step("secagg_mask", Stage.MASK, params=params)], [Step("secagg_unmask", Stage.UNMASK)]


def build_pipeline(
    strategy: StrategySettings,
    lora: LoraSettings,
    spec: Spec,
    privacy: PrivacyPlan | None = None,
    compression: CompressionSettings | None = None,
    secagg: SecAggSettings | None = None,
) -> Pipeline:
    """The chain: [clip] -> [noise share] -> [compress] -> [mask] => [norm bound] => aggregator
    -> [unmask] -> [central noise] -> server optimizer.

    With DP the mean divides by the expected cohort (a fixed denominator, as in McMahan
    et al. 2018), not by the number of arrivals, so one client changes the mean by at most
    clip_norm / expected_cohort.
    """
    compression = compression or CompressionSettings()
    check_compression(compression, strategy, privacy, secagg)
    client_dp, server_dp = privacy_steps(privacy)
    mask, unmask = secagg_steps(secagg)
    steps: list[Step] = []
    if strategy.clip_norm > 0:
        steps.append(Step("clip", Stage.CLIP, params=(("clip_norm", strategy.clip_norm),)))
    steps += client_dp
    steps += compression_steps(compression, resolved_scale(compression, privacy, secagg))
    steps += mask
    if strategy.norm_bound > 0:
        steps.append(Step("norm_bound", Stage.INGRESS, summable=False, params=(("max_norm", strategy.norm_bound),)))
    aggregator = aggregator_step(strategy, lora)
    if privacy is not None and aggregator.name == "mean":
        aggregator = Step("mean", Stage.AGGREGATE, params=(("denominator", privacy.expected_cohort),))
    steps.append(aggregator)
    steps += unmask
    steps += server_dp
    return make_pipeline(
        tuple(steps), make_server_optimizer(strategy), weighting=strategy.weighting, spec=spec, privacy=privacy,
        max_weight=strategy.max_client_weight,
    )
