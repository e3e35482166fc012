"""The alerts a round can raise, each a small dict: kind, round, the client where one is named, value, threshold.

Pure functions of numbers; nothing here sees an update, a text or a model. An alert names a
client only by its opaque id, and only the per-client kinds do (outlier_update, opposed_update),
which a caller leaves out where per-client figures may not be published (secure aggregation,
differential privacy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedlm.monitoring.statistics import robust_zscore

ALERT_KINDS = ("outlier_update", "opposed_update", "drift", "participation_drop", "slice_regression")
# Scales are floored at a share of the median (statistics.median_and_scale), measured on tiny-model runs: a
# round's five honest update norms can sit within 4% of each other with one 18% above the median, and two
# early rounds' median norms can agree to 1% while the next is 10% lower. A spread below these is not evidence.
NORM_SCALE_FLOOR = 0.10  # a round's update norms: at the default 3.5 z, an update 35% above a tight round's median
DRIFT_NORM_SCALE_FLOOR = 0.05  # earlier rounds' median update norms
DRIFT_LOSS_SCALE_FLOOR = 0.005  # earlier rounds' train losses: a plateaued loss repeats to the third decimal
MIN_COHORT_TO_JUDGE = 3  # with two updates, neither can be told apart from the other


def make_alert(kind: str, round: int, *, value: float, threshold: float, client: str | None = None,
               **context: Any) -> dict[str, Any]:
    """An alert; a non-finite value (a score over a sample with no spread at all) is written as None."""
    if kind not in ALERT_KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    alert: dict[str, Any] = {"kind": kind, "round": round}
    if client is not None:
        alert["client"] = client
    alert.update(context)
    alert["value"] = float(value) if math.isfinite(value) else None
    alert["threshold"] = float(threshold)
    return alert


def outlier_alerts(round: int, clients: Sequence[str], norms: Sequence[float], *, zscore: float) -> list[dict[str, Any]]:
    """"outlier_update" for each client whose update norm is more than `zscore` robust z-scores above the round's median."""
    if zscore == 0 or len(norms) < MIN_COHORT_TO_JUDGE:
        return []
    scores = [robust_zscore(n, norms, min_relative_scale=NORM_SCALE_FLOOR) for n in norms]
    return [make_alert("outlier_update", round, client=c, metric="norm_zscore", value=z, threshold=zscore)
            for c, z in zip(clients, scores, strict=True) if z > zscore]


def opposed_alerts(round: int, clients: Sequence[str], cosines: Sequence[float], *, min_cosine: float) -> list[dict[str, Any]]:
    """"opposed_update" for each client whose cosine to the other clients' updates is below `min_cosine` (-1: off)."""
    if min_cosine <= -1 or len(cosines) < MIN_COHORT_TO_JUDGE:
        return []
    return [make_alert("opposed_update", round, client=c, metric="cosine", value=cos, threshold=min_cosine)
            for c, cos in zip(clients, cosines, strict=True) if math.isfinite(cos) and cos < min_cosine]


def drift_alerts(
    round: int, *, median_norm: float | None, train_loss: float | None, norm_history: Sequence[float],
    loss_history: Sequence[float], zscore: float, warmup: int,
) -> list[dict[str, Any]]:
    """"drift" when the round's median update norm (either way) or its train loss (upward) is more than `zscore`
    robust z-scores from the earlier rounds', once `warmup` earlier rounds are known.

    The train loss counts only when it rises: falling is what training is for, and a loss that
    starts to fall fast after a plateau (a learning-rate warmup ending) is no shift of the data.
    """
    if zscore == 0:
        return []
    alerts = []
    if median_norm is not None and len(norm_history) >= warmup:
        z = robust_zscore(median_norm, norm_history, min_relative_scale=DRIFT_NORM_SCALE_FLOOR)
        if abs(z) > zscore:
            alerts.append(make_alert("drift", round, metric="median_update_norm", value=z, threshold=zscore))
    if train_loss is not None and len(loss_history) >= warmup:
        z = robust_zscore(train_loss, loss_history, min_relative_scale=DRIFT_LOSS_SCALE_FLOOR)
        if z > zscore:
            alerts.append(make_alert("drift", round, metric="train_loss", value=z, threshold=zscore))
    return alerts


def participation_alerts(round: int, *, accepted: int, expected: int, share: float) -> list[dict[str, Any]]:
    """"participation_drop" when fewer than `share` of the `expected` updates were accepted (0: off)."""
    if share == 0 or expected <= 0 or accepted >= share * expected:
        return []
    return [make_alert("participation_drop", round, metric="accepted_share", value=accepted / expected, threshold=share,
                       accepted=accepted, expected=expected)]


def slice_regressions(
    round: int, losses: Mapping[str, float], reference: Mapping[str, float], *, threshold: float,
) -> list[dict[str, Any]]:
    """"slice_regression" for each slice whose eval loss exceeds its reference loss by more than `threshold` (relative).

    The reference is the best earlier version's loss on that slice in a run's monitoring, or
    the production version's where a promotion gate asks; slices without one are not judged (0: off).
    """
    if threshold == 0:
        return []
    alerts = []
    for name in sorted(losses):
        loss, best = losses[name], reference.get(name)
        if best is None or not (math.isfinite(best) and best > 0 and math.isfinite(loss)):
            continue
        rise = (loss - best) / best
        if rise > threshold:
            alerts.append(make_alert("slice_regression", round, slice=name, metric="relative_loss_rise", value=rise,
                                     threshold=threshold, loss=loss, reference=best))
    return alerts


def describe_alert(alert: Mapping[str, Any]) -> str:
    """One log line for an alert: the kind, the round, the client or slice, the measured value and the threshold."""
    where = "".join(f" {key} {alert[key]}" for key in ("client", "slice") if key in alert)
    value = "n/a" if alert["value"] is None else f"{alert['value']:.4g}"
    return (f"monitoring alert {alert['kind']}: round {alert['round']}{where}: {alert.get('metric', 'value')} "
            f"{value} (threshold {alert['threshold']:g})")
