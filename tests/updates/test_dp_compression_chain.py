"""Quantization with DP and SecAgg: what the chain allows on the shared grid, and what it still refuses."""

from __future__ import annotations

import pytest

from fedlm.config import (
    CompressionSettings, ConfigError, FederationSettings, LoraSettings, PrivacySettings, SecAggSettings, StrategySettings,
)
from fedlm.core.vectors import make_spec
from fedlm.privacy.plan import make_privacy_plan
from fedlm.updates.build import build_pipeline
from fedlm.updates.pipeline import SHARED_QUANTIZE, PipelineError, Stage, Step, check_chain

SPEC = make_spec([("m.lora_A.w", (10, 50)), ("m.lora_B.w", (50, 10))])
STRATEGY = StrategySettings(clip_norm=0.1, weighting="uniform")
SECAGG = SecAggSettings(enabled=True)


def plan(placement: str = "central"):
    return make_privacy_plan(PrivacySettings(noise_multiplier=1.0, placement=placement),
                             FederationSettings(clients_per_round=4), 100)


def build(privacy=None, secagg=None, strategy=STRATEGY, **compression):
    return build_pipeline(strategy, LoraSettings(), SPEC, privacy, CompressionSettings(**compression), secagg)


def test_central_dp_with_8_bits_quantizes_on_the_shared_grid_by_default():
    # Execute
    pipeline = build(plan(), quantize_bits=8)
    # Assert: the shared quantizer sits between the clip and the mean, central noise after the sum
    assert pipeline.describe() == "clip -> shared_quantize -> mean -> central_noise -> sgd"
    step = next(s for s in pipeline.client_steps if s.stage == Stage.QUANTIZE)
    assert step.summable and step.param("bits") == 8 and step.param("spread") == 6.0


def test_without_dp_or_secagg_quantization_keeps_a_scale_per_chunk():
    assert build(quantize_bits=8).describe() == "clip -> quantize -> mean -> sgd"
    assert build(quantize_bits=8, scale="shared").describe() == "clip -> shared_quantize -> mean -> sgd"


def test_secagg_sums_codes_on_the_shared_grid():
    pipeline = build(secagg=SECAGG, quantize_bits=8)
    assert pipeline.describe() == "clip -> shared_quantize -> secagg_mask -> mean -> secagg_unmask -> sgd"


@pytest.mark.parametrize("case, kwargs, names", [
    ("chunk scale with DP", dict(privacy="central", scale="chunk"), ("compression.scale", "privacy.noise_multiplier")),
    ("distributed noise", dict(privacy="distributed"), ("compression.quantize_bits", "privacy.placement")),
    ("chunk scale with SecAgg", dict(secagg=True, scale="chunk"), ("compression.scale", "secagg.enabled")),
    ("rotation with SecAgg", dict(secagg=True, rotate=True), ("compression.rotate", "secagg.enabled")),
    ("sparsified with DP", dict(privacy="central", sparsify="random", fraction=0.5),
     ("compression.sparsify", "compression.quantize_bits")),
    ("no clip norm", dict(scale="shared", strategy=StrategySettings()), ("compression.scale", "strategy.clip_norm")),
])
def test_what_is_still_refused_names_both_settings(case, kwargs, names):
    # Prepare
    privacy = plan(kwargs.pop("privacy")) if "privacy" in kwargs else None
    secagg = SECAGG if kwargs.pop("secagg", False) else None
    # Execute
    with pytest.raises(PipelineError) as refused:
        build(privacy, secagg, quantize_bits=8, **kwargs)
    # Assert
    for name in names:
        assert name in str(refused.value), case


def test_the_chain_refuses_the_shared_quantizer_after_a_noise_share():
    steps = (Step("clip", Stage.CLIP), Step("noise_share", Stage.NOISE_SHARE), Step(SHARED_QUANTIZE, Stage.QUANTIZE),
             Step("mean", Stage.AGGREGATE))
    with pytest.raises(PipelineError, match="shared_quantize cannot be combined with noise_share"):
        check_chain(steps, build().optimizer)


@pytest.mark.parametrize("settings, key", [
    (dict(quantize_bits=8, scale="global"), "compression.scale"),
    (dict(scale="shared"), "compression.scale"),
    (dict(quantize_bits=8, scale="shared", sparsify="random", fraction=0.5), "compression.scale"),
    (dict(quantize_bits=8, shared_range=0.0), "compression.shared_range"),
    (dict(quantize_bits=8, scale="chunk", shared_range=3.0), "compression.shared_range"),
])
def test_compression_settings_refuse_a_scale_that_cannot_apply(settings, key):
    with pytest.raises(ConfigError, match=key):
        CompressionSettings(**settings)
