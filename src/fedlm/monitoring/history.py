"""The earlier rounds a round is judged against: recent median update norms and train losses, each slice's best loss.

Frozen, advanced by a pure function after every round, and rebuilt from the metrics a run
already wrote (metrics.jsonl, or the service's version rows): a resumed or restarted run
judges its next round exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Drift is judged against at most this many earlier rounds: a trend slower than that is the
# run's course, not a shift, and the history a long-running service keeps stays bounded.
HISTORY_ROUNDS = 20


@dataclass(frozen=True)
class MonitorHistory:
    median_norms: tuple[float, ...] = ()  # the last HISTORY_ROUNDS rounds' median client update norm (per-client rounds only)
    train_losses: tuple[float, ...] = ()  # the last HISTORY_ROUNDS rounds' train loss, as the metrics publish it
    best_slices: Mapping[str, float] = field(default_factory=dict)  # each evaluation slice's lowest loss so far


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite number (not a bool), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else None


def advance(history: MonitorHistory, *, median_norm: float | None, train_loss: float | None,
            slices: Mapping[str, float]) -> MonitorHistory:
    """The history after a round; a figure the round lacks (None) leaves its series as it was."""
    norms = history.median_norms if median_norm is None else (*history.median_norms, median_norm)[-HISTORY_ROUNDS:]
    losses = history.train_losses if train_loss is None else (*history.train_losses, train_loss)[-HISTORY_ROUNDS:]
    best = dict(history.best_slices)
    for name, loss in slices.items():
        best[name] = min(loss, best.get(name, math.inf))
    return MonitorHistory(norms, losses, best)


def slice_losses(record: Mapping[str, Any]) -> dict[str, float]:
    """A round's evaluation losses by slice: "overall" (the simulation's eval.loss, the service's eval_loss),
    "site:NAME" for each site a per-site evaluation scored, "slice:NAME" for each slice the service's evaluator scored."""
    losses: dict[str, float] = {}
    evaluation = record.get("eval")
    overall = finite_number(evaluation.get("loss")) if isinstance(evaluation, Mapping) and evaluation.get("tokens", 1) else None
    overall = overall if overall is not None else finite_number(record.get("eval_loss"))
    if overall is not None:
        losses["overall"] = overall
    sites = record.get("sites")
    by_site = sites.get("by_site", {}) if isinstance(sites, Mapping) else {}
    for name, row in sorted(by_site.items()):
        loss = finite_number(row.get("loss")) if isinstance(row, Mapping) and row.get("tokens") else None
        if loss is not None:
            losses[f"site:{name}"] = loss
    slices = record.get("eval_slices")  # the service: each sub-folder of registry.eval_data
    for name, value in sorted(slices.items()) if isinstance(slices, Mapping) else ():
        if (loss := finite_number(value)) is not None:
            losses[f"slice:{name}"] = loss
    return losses


def round_median_norm(record: Mapping[str, Any]) -> float | None:
    monitor = record.get("monitor")
    norm = monitor.get("norm") if isinstance(monitor, Mapping) and monitor.get("per_client") else None
    return finite_number(norm.get("median")) if isinstance(norm, Mapping) else None


def history_from_records(records: Iterable[Mapping[str, Any]]) -> MonitorHistory:
    """The history as it stood after the last of `records` (metrics lines or version metrics, in round order)."""
    history = MonitorHistory()
    for record in records:
        history = advance(history, median_norm=round_median_norm(record), train_loss=finite_number(record.get("train_loss")),
                          slices=slice_losses(record))
    return history
