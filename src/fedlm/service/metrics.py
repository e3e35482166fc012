"""Prometheus metrics of one service instance, in a registry of its own (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
