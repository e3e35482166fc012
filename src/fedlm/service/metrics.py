"""Prometheus metrics of one service instance, in a registry of its own (so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedlm.monitoring.alerts import ALERT_KINDS

# (alerts raised by kind since start-up, the last closed round's "monitor" object): Coordinator.monitoring_snapshot
MonitoringSnapshot = Callable[[], tuple[dict[str, int], dict[str, Any]]]


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter("fedlm_updates_accepted", "Updates accepted", registry=self.registry)
        self.refused = Counter("fedlm_updates_refused", "Uploads refused", ["reason"], registry=self.registry)
        self.bytes_received = Counter("fedlm_upload_bytes", "Bytes of accepted uploads", registry=self.registry)
        self.upload_seconds = Histogram("fedlm_upload_seconds", "Upload handling time, body streaming included",
                                        registry=self.registry,
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.auth_refused = Counter("fedlm_auth_refused", "Refused authentications (TLS handshakes, 401, 403) by reason",
                                    ["reason"], registry=self.registry)
        self.requests = Counter("fedlm_requests", "Requests by route and status", ["route", "status"], registry=self.registry)
        self.round = Gauge("fedlm_round", "The open round (0 when none)", registry=self.registry)
        self.rounds_done = Gauge("fedlm_rounds_done", "Rounds closed", registry=self.registry)
        self.version = Gauge("fedlm_global_version", "The latest global model version", registry=self.registry)

    def watch_monitoring(self, snapshot: MonitoringSnapshot) -> None:
        """Expose drift and anomaly monitoring, read from `snapshot` at every scrape (see MonitoringCollector)."""
        self.registry.register(MonitoringCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MonitoringCollector(Collector):
    """fedlm_alerts_total{kind} (every kind, 0 until raised) and fedlm_update_stats_per_client (1 when the last closed
    round's per-client statistics were observed; 0 under secure aggregation or DP).

    The norm and cosine quantiles themselves are not exposed here: /metrics answers any client certificate, and with a
    small cohort a quantile is one client's figure. They are in the versions' metrics, which only operators see (the
    dashboard)."""

    def __init__(self, snapshot: MonitoringSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        counts, monitor = self.snapshot()
        alerts = CounterMetricFamily("fedlm_alerts", "Monitoring alerts raised since start-up, by kind", labels=["kind"])
        for kind in ALERT_KINDS:
            alerts.add_metric([kind], counts.get(kind, 0))
        yield alerts
        yield GaugeMetricFamily("fedlm_update_stats_per_client", "1 when the last closed round's per-client update "
                                "statistics were observed (0 under secure aggregation or DP, or before any round)",
                                value=1 if monitor.get("per_client") else 0)
