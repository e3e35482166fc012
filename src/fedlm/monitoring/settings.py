"""The [monitoring] table: the thresholds past which a round raises an alert (a metric, a log line, a report note).

Defaults measured on tiny-model runs (see fedlm.monitoring.alerts for the scale floors): honest runs of 12 rounds
raised no alert on 15 seeds over two settings, nor with outlier 2.5, drift 3 and min cosine 0 (largest honest
scores over 8 seeds: norm outlier z 1.84, median-norm drift |z| 2.63, lowest cosine 0.042); a sign-flipped update
ten times larger scored z > 20 and cosine < -0.5, and a switch to random bytes scored drift z 9.5 to 10.2.
drift_warmup went from 3 to 5 as a margin, not a measured need: with three earlier values the MAD is the middle
of three deviations, one of them the first round's (its median norm 24% below round 2's in every tiny seed); at 3
with a 0.5% norm floor one seed of six raised a false drift, and the 5% floor alone removed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedlm.settings_checks import require


@dataclass(frozen=True)
class MonitoringSettings:
    enabled: bool = True  # compute per-round update statistics and alerts
    outlier_zscore: float = 3.5  # a client whose update norm is this many robust z-scores (median/MAD) above the round's raises "outlier_update" (Iglewicz & Hoaglin's 3.5); 0 = off
    min_cosine: float = -0.2  # a client whose update's cosine to the other updates is below this raises "opposed_update"; -1 = off
    drift_zscore: float = 4.0  # a round whose median update norm (either way) or train loss (upward) is this many robust z-scores from earlier rounds' raises "drift"; 0 = off
    drift_warmup: int = 5  # rounds of history before drift is judged (was 3: the first round's median norm is ~25% below the next ones', the adapter starting from zero; a margin, see the module docstring)
    participation_drop: float = 0.5  # accepted updates below this share of the cohort raise "participation_drop"; 0 = off
    slice_regression: float = 0.05  # a slice whose eval loss rises by more than this share over the best earlier version raises "slice_regression"; 0 = off

    def __post_init__(self) -> None:
        for name in ("outlier_zscore", "drift_zscore", "slice_regression"):
            value = getattr(self, name)
            require(0 <= value < math.inf, f"monitoring.{name}", "must be a finite number >= 0 (0 = off)")
        require(-1 <= self.min_cosine <= 1, "monitoring.min_cosine", "must be in [-1, 1] (-1 = off)")
        require(self.drift_warmup >= 1, "monitoring.drift_warmup", "must be >= 1")
        require(0 <= self.participation_drop <= 1, "monitoring.participation_drop", "must be in [0, 1] (0 = off)")
