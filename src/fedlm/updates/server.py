"""The server side of the pipeline: per-update steps, aggregation, and the server optimizer.

Pure functions over arrays; the round engine calls them and owns the buffers.
"""

from __future__ import annotations

import numpy as np

from fedlm.aggregation import robust, server_opt
from fedlm.aggregation.lora_modes import svd_aggregate
from fedlm.aggregation.mean import weighted_mean
from fedlm.privacy.noise import add_gaussian
from fedlm.updates.pipeline import CORRELATED_NOISE, Pipeline, Stage


def apply_ingress(pipeline: Pipeline, vector: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Per-update server steps (norm bounding). Writes into `scratch`, never into `vector`."""
    result = vector
    for step in pipeline.ingress_steps:
        if step.name != "norm_bound":
            raise ValueError(f"unknown per-update server step {step.name!r}")
        result, _ = robust.bound_norm(result, max_norm=step.param("max_norm"), out=scratch)
    return result


def noised_mean(
    pipeline: Pipeline, total: np.ndarray, weights: np.ndarray, clip_norm: float, correlated: np.ndarray | None = None,
) -> np.ndarray:
    """sum -> [central noise, std z * clip_norm; or the round's correlated noise] -> divide by the fixed
    denominator or the weight sum."""
    noisy = total
    for step in pipeline.steps:
        if step.stage == Stage.CENTRAL_NOISE and step.name == CORRELATED_NOISE:
            if correlated is None or correlated.shape != total.shape:
                raise ValueError("the correlated_noise step needs the round's noise vector (banded MF-DP-FTRL)")
            noisy = total + correlated
        elif step.stage == Stage.CENTRAL_NOISE:
            noisy = total.copy()
            add_gaussian(noisy, step.param("noise_multiplier") * clip_norm)
    denominator = dict(pipeline.aggregator.params).get("denominator") or float(weights.sum())
    return weighted_mean(noisy, denominator)


def aggregate(
    pipeline: Pipeline, global_vector: np.ndarray, total: np.ndarray, rows: np.ndarray | None, weights: np.ndarray,
    clip_norm: float = 0.0, correlated: np.ndarray | None = None,
) -> np.ndarray:
    """The round's aggregate delta: the (noised) mean of the folded sum, or a robust statistic of the rows.
    `correlated`: banded MF-DP-FTRL's noise for this round's sum, already scaled."""
    step = pipeline.aggregator
    if step.name == "mean":
        return noised_mean(pipeline, total, weights, clip_norm, correlated)
    if rows is None:
        raise ValueError(f"the {step.name} aggregator needs every update of the round")
    if step.name == "lora_svd":
        new_global = svd_aggregate(pipeline.spec, global_vector, rows, weights,
                                   rank=int(step.param("rank")), server_lr=pipeline.optimizer.lr)
        return new_global - global_vector
    if step.name == "median":
        return robust.coordinate_median(rows)
    if step.name == "trimmed_mean":
        return robust.trimmed_mean(rows, trim_fraction=step.param("trim_fraction"))
    f = int(step.param("num_byzantine"))
    if step.name == "krum":
        return robust.krum(rows, num_byzantine=f)[0]
    if step.name == "multi_krum":
        selected = int(step.param("num_selected")) or len(rows) - f
        return robust.multi_krum(rows, num_byzantine=f, num_selected=selected)[0]
    raise ValueError(f"unknown aggregator {step.name!r}")


def initial_optimizer_state(pipeline: Pipeline, size: int) -> tuple[np.ndarray, ...]:
    return server_opt.init_state(pipeline.optimizer, size)


def optimize(
    pipeline: Pipeline, state: tuple[np.ndarray, ...], global_vector: np.ndarray, aggregate_delta: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The new global and optimizer state. svd already applied the server learning rate to B.A."""
    if pipeline.aggregator.name == "lora_svd":
        return global_vector + aggregate_delta, state
    return server_opt.apply(pipeline.optimizer, state, global_vector, aggregate_delta)
