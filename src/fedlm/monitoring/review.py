"""A round's monitoring verdict: the "monitor" summary and the alerts for its metrics, and the history after it.

The per-client figures (each update's norm and its cosine to the others) come from the
round's watch, which exists only where the server sees single updates; under secure
aggregation it sees only the sum, and under differential privacy no un-noised per-client
figure may be published, so the monitor says `per_client: false` and why, and only the
aggregate checks run (train-loss drift, participation, slice regression). Those read the
round's published metrics, so they never reveal more than the metrics line already does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlm.monitoring.alerts import (
    drift_alerts, opposed_alerts, outlier_alerts, participation_alerts, slice_regressions,
)
from fedlm.monitoring.history import MonitorHistory, advance, finite_number, slice_losses
from fedlm.monitoring.settings import MonitoringSettings
from fedlm.monitoring.sketch import cosines_to_others
from fedlm.monitoring.statistics import five_numbers
from fedlm.monitoring.watch import RoundWatch, observed_norms, observed_sketches

UNDER_SECAGG = "secure aggregation: the server sees only the sum of the cohort's updates"
UNDER_DP = "differential privacy: no un-noised per-client figure is published"


@dataclass(frozen=True)
class RoundReview:
    monitor: dict[str, Any]  # the metrics' "monitor" object
    alerts: list[dict[str, Any]]  # the metrics' "alerts" list
    history: MonitorHistory  # what the next round is judged against


def per_client_unavailable(*, secure: bool, noise_multiplier: float) -> str | None:
    """Why per-client statistics may not be computed or published for this run, or None when they may."""
    if secure:
        return UNDER_SECAGG
    if noise_multiplier > 0:
        return UNDER_DP
    return None


def per_client_figures(watch: RoundWatch) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The observed clients, their exact update norms and their (sketched) cosines to the others."""
    sketches = observed_sketches(watch)
    cosines = cosines_to_others(sketches) if len(sketches) >= 2 else np.full(len(sketches), np.nan)
    return list(watch.clients), observed_norms(watch), cosines


def review_round(
    record: Mapping[str, Any], *, watch: RoundWatch | None, history: MonitorHistory, settings: MonitoringSettings,
    expected: int, unavailable: str | None = None,
) -> RoundReview:
    """Judge a closed round from its published metrics `record` (round, accepted, train_loss, eval/eval_loss,
    sites) and, where per-client figures are allowed, its `watch`; `expected` is the updates the round wanted."""
    round = int(record["round"])
    monitor: dict[str, Any] = {"per_client": watch is not None and unavailable is None}
    alerts: list[dict[str, Any]] = []
    median_norm = None
    if monitor["per_client"]:
        clients, norms, cosines = per_client_figures(watch)
        monitor.update(updates=len(clients), norm=five_numbers(norms), cosine=five_numbers(cosines[np.isfinite(cosines)]))
        median_norm = monitor["norm"]["median"] if monitor["norm"] else None
        alerts += outlier_alerts(round, clients, norms, zscore=settings.outlier_zscore)
        alerts += opposed_alerts(round, clients, cosines, min_cosine=settings.min_cosine)
    else:
        monitor["unavailable"] = unavailable or "no single update was observed"
    train_loss = finite_number(record.get("train_loss"))
    alerts += drift_alerts(round, median_norm=median_norm, train_loss=train_loss, norm_history=history.median_norms,
                           loss_history=history.train_losses, zscore=settings.drift_zscore, warmup=settings.drift_warmup)
    alerts += participation_alerts(round, accepted=int(record["accepted"]), expected=expected,
                                   share=settings.participation_drop)
    slices = slice_losses(record)
    alerts += slice_regressions(round, slices, history.best_slices, threshold=settings.slice_regression)
    monitor["alerts"] = len(alerts)
    return RoundReview(monitor, alerts, advance(history, median_norm=median_norm, train_loss=train_loss, slices=slices))
