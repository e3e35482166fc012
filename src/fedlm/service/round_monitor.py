"""The coordinator's drift and anomaly monitoring ([monitoring]): a mixin of service.coordinator.Coordinator.

Each accepted update is noted as it arrives (its norm and a count sketch, fedlm.monitoring), the
round's verdict goes into the version's metrics when it closes, and each alert is logged once the
round is stored. Per-client figures exist only where the server may see single updates: under
secure aggregation or differential privacy they are never computed.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fedlm.monitoring.alerts import describe_alert
from fedlm.monitoring.history import MonitorHistory
from fedlm.monitoring.review import RoundReview, per_client_unavailable, review_round
from fedlm.monitoring.sketch import make_sketcher
from fedlm.monitoring.watch import RoundWatch, open_watch
from fedlm.server.rounds import OpenRound

log = logging.getLogger("fedlm.service")


class RoundMonitoring:
    """Needs the coordinator's run, pipeline, lock, round_row and watch attributes."""

    def _init_monitoring(self, size: int) -> None:
        """Per-round update statistics and alerts ([monitoring]); per-client figures only where the server may see them."""
        noise = max(self.run.privacy.noise_multiplier, self.pipeline.privacy.noise_multiplier if self.pipeline.privacy else 0.0)
        self.monitor_unavailable = per_client_unavailable(secure=self.pipeline.mask is not None, noise_multiplier=noise)
        wanted = self.run.monitoring.enabled and self.monitor_unavailable is None
        # the sketch's signs come from a secret of this process, not the run seed every client reads in /v1/config: a
        # client that knew them could add what the sketch cannot see and pass the cosine check. A restart draws new
        # signs and re-observes the open round's accepted updates (_recover), so a round's sketches always agree.
        self.sketcher = make_sketcher(size, secrets.randbits(63)) if wanted else None
        self.watch: RoundWatch | None = None
        self.alert_counts: dict[str, int] = {}  # alerts raised by kind since this process started (a Prometheus counter)
        self.last_monitor: dict[str, Any] = {}  # the last closed round's "monitor" object
        self.monitor_history = MonitorHistory()  # rebuilt from the versions' metrics on restart (_recover)

    def _open_watch(self, cohort_size: int) -> RoundWatch | None:
        return open_watch(self.sketcher, cohort_size) if self.sketcher is not None else None

    def _review(self, rnd: OpenRound, metrics: dict[str, Any]) -> RoundReview | None:
        """The round's monitoring verdict, its "monitor" object and "alerts" list put into `metrics` (monitoring on)."""
        if not self.run.monitoring.enabled:
            return None
        review = review_round({**metrics, "round": rnd.round}, watch=self.watch, history=self.monitor_history,
                              settings=self.run.monitoring, expected=min(len(rnd.cohort), self.round_row.target),
                              unavailable=self.monitor_unavailable)
        metrics["monitor"], metrics["alerts"] = review.monitor, review.alerts
        return review

    def _raise_alerts(self, round: int, review: RoundReview | None) -> None:
        """Once the round is stored: each alert as one warning line and a count, and the history moves on."""
        self.watch = None
        if review is None:
            return
        self.monitor_history, self.last_monitor = review.history, review.monitor
        for alert in review.alerts:
            self.alert_counts[alert["kind"]] = self.alert_counts.get(alert["kind"], 0) + 1
            fields = {"round": round, "alert": alert["kind"], **({"client_id": alert["client"]} if "client" in alert else {})}
            log.warning(describe_alert(alert), extra=fields)

    def monitoring_snapshot(self) -> tuple[dict[str, int], dict[str, Any]]:
        """Alerts raised by kind since start-up and the last closed round's "monitor" object (for /metrics)."""
        with self.lock:
            return dict(self.alert_counts), dict(self.last_monitor)
