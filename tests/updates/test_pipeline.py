"""The update pipeline: built from settings, checked when built, refusing what cannot work."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.aggregation.server_opt import ServerOptimizer
from fedlm.config import LoraSettings, StrategySettings
from fedlm.core.types import Task
from fedlm.core.vectors import make_spec
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import make_encoder
from fedlm.updates.clip import clip_in_place
from fedlm.updates.pipeline import PipelineError, Stage, Step, check_chain, make_pipeline

SGD = ServerOptimizer("sgd", lr=1.0)
SPEC = make_spec([("m.lora_A.w", (2, 3)), ("m.lora_B.w", (3, 2))])
MASK = Step("secagg_mask", Stage.MASK)  # a test double: secure aggregation lands in its own issue


def build(strategy: dict | None = None, lora: dict | None = None):
    return build_pipeline(StrategySettings(**(strategy or {})), LoraSettings(**(lora or {})), SPEC)


def test_default_pipeline_is_plain_fedavg():
    pipeline = build()
    assert [s.name for s in pipeline.steps] == ["mean"]
    assert pipeline.optimizer == SGD
    assert not pipeline.needs_stack
    assert pipeline.describe() == "mean -> sgd"


def test_full_chain_is_built_in_canonical_order():
    pipeline = build({"clip_norm": 1.0, "norm_bound": 2.0, "aggregator": "krum", "num_byzantine": 1, "server_optimizer": "yogi"})
    assert pipeline.describe() == "clip -> norm_bound -> krum -> yogi"
    assert [s.name for s in pipeline.client_steps] == ["clip"]
    assert [s.name for s in pipeline.ingress_steps] == ["norm_bound"]
    assert pipeline.needs_stack and pipeline.aggregator.param("num_byzantine") == 1


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "krum", "multi_krum"])
def test_robust_aggregators_are_refused_with_secure_aggregation(aggregator):
    step = Step(aggregator, Stage.AGGREGATE, summable=False)
    with pytest.raises(PipelineError, match=f"{aggregator} needs to see individual updates, but secagg_mask"):
        check_chain((MASK, step), SGD)


def test_server_norm_bound_is_refused_with_secure_aggregation():
    steps = (MASK, Step("norm_bound", Stage.INGRESS, summable=False), Step("mean", Stage.AGGREGATE))
    with pytest.raises(PipelineError, match="norm_bound needs to see individual updates, but secagg_mask"):
        check_chain(steps, SGD)


def test_mean_with_secure_aggregation_is_accepted():
    check_chain((Step("clip", Stage.CLIP), MASK, Step("mean", Stage.AGGREGATE)), SGD)


def test_noise_without_clipping_is_refused():
    noise = Step("gaussian_noise", Stage.CENTRAL_NOISE)
    with pytest.raises(PipelineError, match="gaussian_noise needs a clip step"):
        check_chain((Step("mean", Stage.AGGREGATE), noise), SGD)


def test_steps_out_of_order_are_refused_naming_both():
    with pytest.raises(PipelineError, match="clip cannot come after secagg_mask"):
        check_chain((MASK, Step("clip", Stage.CLIP), Step("mean", Stage.AGGREGATE)), SGD)


def test_two_aggregators_are_refused():
    with pytest.raises(PipelineError, match="mean and median are both aggregators"):
        check_chain((Step("mean", Stage.AGGREGATE), Step("median", Stage.AGGREGATE, summable=False)), SGD)


def test_svd_with_a_robust_aggregator_is_refused():
    with pytest.raises(PipelineError, match="strategy.aggregator = 'median' cannot be combined with lora.aggregation = 'svd'"):
        build({"aggregator": "median"}, {"aggregation": "svd"})


@pytest.mark.parametrize("strategy", [{"server_optimizer": "adam"}, {"server_momentum": 0.9}])
def test_svd_with_stateful_server_optimizer_is_refused(strategy):
    with pytest.raises(PipelineError, match="lora.aggregation = 'svd' cannot be used with server optimizer"):
        build(strategy, {"aggregation": "svd"})


def test_svd_pipeline_keeps_the_spec_and_rank():
    pipeline = build(lora={"aggregation": "svd", "r": 2})
    assert pipeline.aggregator.name == "lora_svd" and pipeline.aggregator.param("rank") == 2
    assert pipeline.spec == SPEC and pipeline.needs_stack


def test_unknown_weighting_is_refused():
    with pytest.raises(PipelineError, match="weighting"):
        make_pipeline((Step("mean", Stage.AGGREGATE),), SGD, weighting="by_loss")


def test_clip_scales_to_the_bound_and_leaves_small_and_zero_updates_alone():
    big, small, zero = np.array([3, 4], np.float32), np.array([0.3, 0.4], np.float32), np.zeros(2, np.float32)
    assert clip_in_place(big, 1.0) == pytest.approx(5.0)
    assert big.tolist() == pytest.approx([0.6, 0.8])
    assert float(np.linalg.norm(big.astype(np.float64))) <= 1.0
    assert clip_in_place(small, 1.0) == pytest.approx(0.5) and small.tolist() == pytest.approx([0.3, 0.4])
    assert clip_in_place(zero, 1.0) == 0.0 and zero.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="clip_norm"):
        clip_in_place(zero, 0.0)


def test_client_encoder_clips_in_place_and_reports_numbers_only():
    encode = make_encoder(build({"clip_norm": 2.0}), seed=0)
    task = Task(round=1, version=0, client_id="c", clip_norm=2.0)
    vector = np.array([6, 8], np.float32)
    metrics = encode(vector, task, None)
    assert vector.tolist() == pytest.approx([1.2, 1.6])
    assert metrics == {"update_norm": pytest.approx(10.0), "unclipped": 0.0, "bytes_up": 16 + 8}
    small = np.array([0.6, 0.8], np.float32)
    assert encode(small, task, None)["unclipped"] == 1.0 and small.tolist() == pytest.approx([0.6, 0.8])
