"""Monitoring through the service coordinator: a poisoned upload's alerts land in the committed version's
metrics, the log and the Prometheus counter; a restart rebuilds the history; under DP no client is named."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np

from fedlm.config import RunConfig, apply_overrides
from fedlm.monitoring.review import UNDER_DP, UNDER_SECAGG
from fedlm.privacy.plan import make_privacy_plan
from fedlm.service import store as db
from fedlm.service.blobs import BlobStore
from fedlm.service.coordinator import Coordinator
from fedlm.service.metrics import ServiceMetrics
from fedlm.service.scheduling import Traits
from fedlm.service.settings import RegistrySection, SchedulingSection, SecAggSection
from fedlm.service.store import Store
from fedlm.updates import wire
from fedlm.updates.build import build_pipeline

# the service tests' in-process fixtures (a coordinator over a 6-value global, certificates, the real app)
_spec = importlib.util.spec_from_file_location("service_fixtures", Path(__file__).parents[1] / "service" / "conftest.py")
fixtures = sys.modules.setdefault("service_fixtures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fixtures)

NAMES = ("alice", "bob", "carol", "dave")
HONEST = {"alice": [1.0, 1.0, 1.0, 1.0, 1.0, 1.1], "bob": [0.9, 1.0, 1.1, 1.0, 1.0, 1.0],
          "carol": [1.0, 1.1, 0.9, 1.0, 1.0, 1.0]}
POISONED = [-10.0, -10.0, -10.0, -10.0, -10.0, -10.0]  # dave: sign-flipped and ten times larger


def upload(client, vector, loss: float):
    return client.post("/v1/rounds/1/updates", params={"version": 0, "num_samples": 1},
                       content=wire.serialize_dense(np.asarray(vector, np.float32)),
                       headers={"X-Fedlm-Metrics": f'{{"train_loss": {loss}}}'})


def prometheus(service) -> dict[str, float]:
    """The monitoring series of a scrape of the app's /metrics (which create_app wires to the coordinator's snapshot)."""
    lines = service.clients["alice"].get("/metrics").text.splitlines()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines if line.startswith("fedlm_")
                                                    and ("alerts" in line or "update_" in line))}


def rendered_series(coordinator) -> dict[str, float]:
    """The same series rendered from a coordinator without an app (as create_app registers its snapshot)."""
    metrics = ServiceMetrics()
    metrics.watch_monitoring(coordinator.monitoring_snapshot)
    lines = metrics.render().decode().splitlines()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines if line.startswith("fedlm_")
                                                    and ("alerts" in line or "update_" in line))}


def test_a_poisoned_upload_raises_alerts_in_the_version_metrics_the_log_and_prometheus(tmp_path, caplog):
    # Prepare: a round of four; dave's update is the poisoned one
    service = fixtures.build_service(tmp_path, f"sqlite:///{tmp_path / 'fedlm.db'}", names=NAMES, clients_per_round=4)
    for name in NAMES:
        assert service.clients[name].post("/v1/clients/register", json={}).status_code == 200
    for name in NAMES:
        assert service.clients[name].post("/v1/tasks/next", json={}).json()["task"]["round"] == 1
    # Execute: the fourth upload reaches the target and closes the round
    with caplog.at_level(logging.WARNING, logger="fedlm.service"):
        for name, vector in [*HONEST.items(), ("dave", POISONED)]:
            assert upload(service.clients[name], vector, 2.0).status_code == 200
    # Assert: version 1's stored metrics carry the monitor and both alerts naming dave
    with service.coordinator.store.session() as session:
        metrics = session.get(db.VersionRow, 1).metrics
    assert [(a["kind"], a["client"], a["round"]) for a in metrics["alerts"]] == [
        ("outlier_update", "dave", 1), ("opposed_update", "dave", 1)]
    monitor = metrics["monitor"]
    assert monitor["per_client"] and monitor["updates"] == 4 and monitor["alerts"] == 2
    assert abs(monitor["norm"]["max"] - np.sqrt(600.0)) < 1e-4  # dave's exact norm
    assert monitor["cosine"]["min"] < -0.99
    # the Prometheus counter by kind; no single client's figure on /metrics (any client may scrape it)
    series = prometheus(service)
    assert series['fedlm_alerts_total{kind="outlier_update"}'] == 1.0
    assert series['fedlm_alerts_total{kind="opposed_update"}'] == 1.0
    assert series['fedlm_alerts_total{kind="drift"}'] == 0.0
    assert not any("quantile" in name for name in series)
    assert series["fedlm_update_stats_per_client"] == 1.0
    # one warning line per alert, with its structured fields
    warnings = [r for r in caplog.records if r.getMessage().startswith("monitoring alert")]
    assert [(r.alert, r.client_id, r.round) for r in warnings] == [("outlier_update", "dave", 1), ("opposed_update", "dave", 1)]


def test_a_restarted_coordinator_rebuilds_the_monitoring_history_from_the_versions(tmp_path):
    # Prepare: one closed round
    service = fixtures.build_service(tmp_path, f"sqlite:///{tmp_path / 'fedlm.db'}", names=NAMES, clients_per_round=4)
    for name in NAMES:
        service.clients[name].post("/v1/clients/register", json={})
    for name in NAMES:
        service.clients[name].post("/v1/tasks/next", json={})
    for name, vector in [*HONEST.items(), ("dave", POISONED)]:
        upload(service.clients[name], vector, 2.5)
    before = service.coordinator.monitor_history
    # Execute
    restarted = service.restart()
    # Assert
    assert before.train_losses == (2.5,) and len(before.median_norms) == 1
    assert restarted.monitor_history == before


def dp_coordinator(root: Path, run: RunConfig) -> Coordinator:
    """The coordinator as the service runtime builds it: the run's own pipeline with its privacy plan."""
    plan = make_privacy_plan(run.privacy, run.federation, 100)
    pipeline = build_pipeline(run.strategy, run.lora, None, plan, run.compression, run.secagg)
    return Coordinator(Store(f"sqlite:///{root / 'dp.db'}"), BlobStore(root / "blobs"), run=run, pipeline=pipeline,
                       initial_global=fixtures.INITIAL, scheduling=SchedulingSection(population=100),
                       registry=RegistrySection(), clock=fixtures.FakeClock(), secagg=SecAggSection())


def test_under_central_dp_the_service_names_no_client_and_publishes_no_per_client_quantile(tmp_path, caplog):
    # Prepare: central DP (clip 30, z = 1); dave's update is sign-flipped and scaled (inside the clip), and one
    # more client was invited than arrive before the deadline, so participation_drop (aggregate) still fires
    run = apply_overrides(RunConfig(), {
        "model": {"name": "tiny"}, "federation": {"rounds": 2, "clients_per_round": 4},
        "strategy": {"clip_norm": 30.0, "weighting": "uniform"}, "privacy": {"noise_multiplier": 1.0},
        "monitoring": {"participation_drop": 1.0}})
    coordinator = dp_coordinator(tmp_path, run)
    for name in NAMES:
        coordinator.register(name, Traits())
    assert all(coordinator.poll(name, Traits()) is not None for name in NAMES)
    # Execute: three of four arrive, then the deadline passes
    with caplog.at_level(logging.WARNING, logger="fedlm.service"):
        for name, vector in [("alice", HONEST["alice"]), ("bob", HONEST["bob"]), ("dave", POISONED)]:
            staged = coordinator.blobs.stage_bytes(wire.serialize_dense(np.asarray(vector, np.float32)))
            coordinator.submit(name, round=1, version=0, num_samples=1, metrics={"train_loss": 2.0}, staged=staged)
        coordinator.clock.now += 1000
        coordinator.tick()
    # Assert
    with coordinator.store.session() as session:
        metrics = session.get(db.VersionRow, 1).metrics
    assert coordinator.sketcher is None and coordinator.monitor_unavailable == UNDER_DP
    assert metrics["monitor"] == {"per_client": False, "unavailable": UNDER_DP, "alerts": 1}
    assert [(a["kind"], a["value"]) for a in metrics["alerts"]] == [("participation_drop", 0.75)]
    assert "dave" not in str(metrics)
    series = rendered_series(coordinator)
    assert series['fedlm_alerts_total{kind="participation_drop"}'] == 1.0
    assert series["fedlm_update_stats_per_client"] == 0.0 and not any("quantile" in name for name in series)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("monitoring alert")]
    assert len(lines) == 1 and "dave" not in lines[0]


def test_under_secure_aggregation_the_service_sketches_nothing(tmp_path):
    # Execute
    service = fixtures.build_service(tmp_path, f"sqlite:///{tmp_path / 'fedlm.db'}",
                                     overrides={"secagg": {"enabled": True}, "strategy": {"clip_norm": 10.0, "weighting": "uniform"}})
    # Assert
    assert service.coordinator.sketcher is None and service.coordinator.monitor_unavailable == UNDER_SECAGG
