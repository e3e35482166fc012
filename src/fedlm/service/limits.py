"""The bounds the service puts on every update by default, so one cohort member cannot wreck the model.

On a network, a client's sample count and its update are whatever it sends. With the run
config's defaults (weighting by samples, no norm bound) one client that claims 2^31 - 1
samples and sends a vector of 1e14s would own the average and swamp every later round,
while the service looked healthy. The service therefore applies `[limits]` from server.toml
wherever the run config leaves the matching strategy setting at 0 (off):

- `norm_bound`: each arriving update is scaled to L2 norm <= this before it is folded
  (norm bounding, Sun et al. 2019, "Can You Really Backdoor Federated Learning?",
  arXiv:1911.07963), so one client moves the mean by at most this much;
- `max_client_weight`: under sample weighting a client weighs at most this many samples.

A value the run config sets explicitly wins; `[limits]` set to 0 lifts a bound. Under
secure aggregation the server never sees an update (the client's clip and the integer
encoding bound it), and under differential privacy the clip norm is enforced instead (central
placement refuses an update past it), so neither limit applies there.
"""

from __future__ import annotations

from dataclasses import replace

from fedlm.config import RunConfig


def applies_norm_bound(run: RunConfig) -> bool:
    """Whether the server sees each plain update (no SecAgg masking, no DP noise on it)."""
    return not run.secagg.enabled and not run.privacy.enabled


def with_limits(run: RunConfig, *, norm_bound: float, max_client_weight: float) -> RunConfig:
    """The run config the service runs: the strategy's own bounds, or the service's where it set none."""
    strategy = run.strategy
    if applies_norm_bound(run) and strategy.norm_bound == 0 and norm_bound > 0:
        strategy = replace(strategy, norm_bound=norm_bound)
    if strategy.weighting == "samples" and strategy.max_client_weight == 0 and max_client_weight > 0:
        strategy = replace(strategy, max_client_weight=max_client_weight)
    return replace(run, strategy=strategy)


def describe_limits(run: RunConfig) -> str:
    """One line for the start-up log: the bounds in force (never a value from an update)."""
    strategy = run.strategy
    norm = f"norm <= {strategy.norm_bound:g}" if strategy.norm_bound > 0 else (
        "norm unbounded by the server" if applies_norm_bound(run) else "norm bounded by the clients' clip")
    if strategy.weighting == "uniform":
        weight = "uniform weights"
    elif strategy.max_client_weight > 0:
        weight = f"weight <= {strategy.max_client_weight:g} samples"
    else:
        weight = "sample weights uncapped"
    return f"update limits: {norm}, {weight}"
