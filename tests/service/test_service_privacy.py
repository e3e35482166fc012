"""Differential privacy through the service: the `fedlm join` loop (take_part) against the real app, in process.

Each client encodes its update with the client steps of the pipeline it builds from the
server's /v1/config, as `fedlm join` does (clip, and with distributed DP its noise share),
so the noise that lands in the global is the real mechanism's. Prepare / Execute / Assert,
against dp-accounting on the same events and the closed-form noise std z C / cohort.
"""

from __future__ import annotations

import threading

import numpy as np
import dp_accounting
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fedlm.config import RunConfig, apply_overrides, config_from_dict
from fedlm.core.types import Task
from fedlm.privacy.accountant import epsilon_of, gaussian_round_event
from fedlm.privacy.ledger import PrivacyLedger
from fedlm.privacy.plan import make_privacy_plan
from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.app import create_app
from fedlm.service.blobs import BlobStore
from fedlm.service.client_worker import Connection, take_part
from fedlm.service.coordinator import Coordinator
from fedlm.service.scheduling import Traits
from fedlm.service.settings import RegistrySection, SchedulingSection, SecAggSection
from fedlm.service.store import Store
from fedlm.service.tls import with_tls_extension
from fedlm.updates import wire
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import make_encoder
from fedlm.updates.pipeline import Stage

from conftest import FakeClock, client_for

SIZE = 20_000  # enough coordinates that the sample std is within 0.5% (one sd) of the noise std
POPULATION = 100
CLIP = 1e-3
Z = 2.0
DELTA = 1 / POPULATION**1.1  # the plan's default delta


def update_of(name: str) -> np.ndarray:
    """A client's raw update: norm about 80, far past the clip norm."""
    return np.random.default_rng(sum(name.encode())).uniform(-1, 1, SIZE).astype(np.float32)


def clipped(name: str) -> np.ndarray:
    update = update_of(name).astype(np.float64)
    return update * min(1.0, CLIP / np.linalg.norm(update))


def dp_coordinator(root, run: RunConfig, *, size: int = SIZE) -> Coordinator:
    """The coordinator as runtime.build_runtime makes it: the run's own pipeline with its privacy plan (none without DP)."""
    plan = make_privacy_plan(run.privacy, run.federation, POPULATION)
    pipeline = build_pipeline(run.strategy, run.lora, None, plan, run.compression, run.secagg)
    initial = np.random.default_rng(7).normal(size=size).astype(np.float32)
    return Coordinator(Store(f"sqlite:///{root / 'dp.db'}"), BlobStore(root / "blobs"), run=run, pipeline=pipeline,
                       initial_global=initial, scheduling=SchedulingSection(deadline_seconds=100.0, population=POPULATION),
                       registry=RegistrySection(), clock=FakeClock(), secagg=SecAggSection())


def run_config(clients: int, **sections) -> RunConfig:
    base = {"model": {"name": "tiny"}, "federation": {"rounds": 3, "clients_per_round": clients, "sampling": "fixed"},
            "strategy": {"clip_norm": CLIP, "weighting": "uniform"}, "privacy": {"noise_multiplier": Z}}
    return apply_overrides(apply_overrides(RunConfig(), base), sections)


def encoding_trainer(conn: Connection, name: str):
    """The client steps of the pipeline built from /v1/config (as service.local_trainer does), on a fixed update."""
    config = conn.request("GET", "/v1/config").json()
    run = config_from_dict(config["run"])
    plan = make_privacy_plan(run.privacy, run.federation, int(config["population"]))
    encode = make_encoder(build_pipeline(run.strategy, run.lora, None, plan, run.compression, run.secagg), seed=run.run.seed)

    def train(task, global_vector):
        vector = update_of(name)
        metrics = encode(vector, Task(task["round"], task["version"], name, task["clip_norm"]))
        return vector, 1, metrics

    return train


def serve_and_join(tmp_path, run: RunConfig, names) -> tuple[Coordinator, dict[str, TestClient], dict[str, int]]:
    """Run every client's join loop in a thread until the coordinator says the run is finished."""
    certs.init_ca(tmp_path / "certs")
    coordinator = dp_coordinator(tmp_path, run)
    verifier = certs.ClientVerifier(tmp_path / "certs" / certs.CA_CERT, tmp_path / "certs" / certs.CRL)
    app = create_app(coordinator, verifier, max_upload_bytes=2**20, population=POPULATION, tick_seconds=0.02)
    clients = {name: client_for(app, certs.issue_client(tmp_path / "certs", name)[0]) for name in names}
    sent: dict[str, int] = {}

    def worker(name: str) -> None:
        conn = Connection.__new__(Connection)  # the retrying request loop, over the in-process app instead of HTTPS
        conn.http = TestClient(with_tls_extension(app, clients[name].tls))
        folder = tmp_path / "certs"  # the client's certificate and key sign its SecAgg messages; the CA checks its neighbours'
        conn.settings = type("Settings", (), {"give_up_after": 5.0, "cert": folder / "clients" / f"{name}.pem",
                                              "key": folder / "clients" / f"{name}.key", "ca": folder / certs.CA_CERT})()
        conn.delay = lambda attempt: 0.01
        conn.request("POST", "/v1/clients/register", json={})
        sent[name] = take_part(conn, name, encoding_trainer(conn, name), Traits())

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return coordinator, clients, sent


def reference_epsilons(clients: int, rounds: int) -> list[float]:
    """dp-accounting on t fixed-size-sampled Gaussian rounds, t = 1..rounds."""
    event = gaussian_round_event(noise_multiplier=Z, sampling="fixed", population=POPULATION, cohort=clients)
    return [epsilon_of([event] * t, delta=DELTA) for t in range(1, rounds + 1)]


def committed_globals(coordinator: Coordinator) -> list[np.ndarray]:
    with coordinator.store.session() as session:
        shas = [v.global_sha256 for v in session.scalars(select(db.VersionRow).order_by(db.VersionRow.version))]
    return [wire.deserialize(coordinator.blobs.read(sha))[1]["vector"].astype(np.float64) for sha in shas]


def assert_ledger_and_epsilon(coordinator: Coordinator, status: dict, clients: int, rounds: int) -> None:
    expected = reference_epsilons(clients, rounds)
    event = gaussian_round_event(noise_multiplier=Z, sampling="fixed", population=POPULATION, cohort=clients)
    with coordinator.store.session() as session:
        ledger = list(session.scalars(select(db.LedgerRow).order_by(db.LedgerRow.round)))
        closed = [r.round for r in session.scalars(select(db.RoundRow).where(db.RoundRow.status == "closed"))]
        versions = {v.version: dict(v.metrics) for v in session.scalars(select(db.VersionRow))}
    # one event per closed round, each the round's sampled Gaussian
    assert [row.round for row in ledger] == sorted(closed) == list(range(1, rounds + 1))
    assert all(PrivacyLedger.from_json(row.event).events() == [event] for row in ledger)
    for t, (row, eps) in enumerate(zip(ledger, expected, strict=True), start=1):
        assert row.epsilon == pytest.approx(eps, rel=1e-9)
        assert versions[t]["epsilon"] == pytest.approx(eps, rel=1e-9)
        assert versions[t]["delta"] == pytest.approx(DELTA)
    assert status["privacy"]["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    assert status["privacy"]["delta"] == pytest.approx(DELTA)
    assert status["privacy"]["accounted_through_round"] == rounds
    # the bound without sampling: every round a plain Gaussian of multiplier Z under add/remove-one neighbours
    unsampled = epsilon_of([dp_accounting.GaussianDpEvent(Z)] * rounds, delta=DELTA)
    assert status["privacy"]["epsilon_without_sampling"] == pytest.approx(unsampled, rel=1e-9)
    assert versions[rounds]["epsilon_without_sampling"] == pytest.approx(unsampled, rel=1e-9)
    assert unsampled > expected[-1]  # sampling's credit is what the assumption buys
    assert "uniform random sample" in status["privacy"]["sampling_assumption"]


def assert_noise_landed(coordinator: Coordinator, names, denominator: int) -> None:
    """Each round moved the global by the mean of the clipped updates plus N(0, (z C / denominator)^2), fresh each round."""
    signal = sum(clipped(n) for n in names) / denominator
    globals_ = committed_globals(coordinator)
    residuals = [after - before - signal for before, after in zip(globals_, globals_[1:])]
    std = Z * CLIP / denominator
    for residual in residuals:
        assert residual.std() == pytest.approx(std, rel=0.03)
        assert abs(residual.mean()) < 5 * std / np.sqrt(SIZE)
    assert abs(np.corrcoef(residuals[0], residuals[1])[0, 1]) < 0.05  # fresh noise every round


def test_central_dp_rounds_record_the_ledger_report_epsilon_and_add_the_noise(tmp_path):
    # Prepare: three clients, cohort 3 of a population of 100, z = 2, tiny clip norm
    names = ("alice", "bob", "carol")
    run = run_config(3)
    # Execute
    coordinator, clients, sent = serve_and_join(tmp_path, run, names)
    status = clients["alice"].get("/v1/status").json()
    # Assert
    assert sent == dict.fromkeys(names, 3) and coordinator.state.version == 3 and status["finished"] is True
    assert [s.stage for s in coordinator.pipeline.steps if s.stage == Stage.CENTRAL_NOISE] == [Stage.CENTRAL_NOISE]
    assert_ledger_and_epsilon(coordinator, status, clients=3, rounds=3)
    assert_noise_landed(coordinator, names, denominator=3)
    assert status["privacy"]["stop_reason"] is None and status["privacy"]["target_epsilon"] is None


def test_distributed_dp_under_secagg_sums_the_clients_noise_shares(tmp_path, monkeypatch):
    # Prepare: four SecAgg clients, each adding a share N(0, (z C)^2 / 4) before masking; the server adds none
    monkeypatch.setattr("fedlm.service.secagg_worker.POLL_SECONDS", 0.01)
    names = ("c0", "c1", "c2", "c3")
    run = run_config(4, secagg={"enabled": True}, privacy={"noise_multiplier": Z, "placement": "distributed"})
    # Execute
    coordinator, clients, sent = serve_and_join(tmp_path, run, names)
    status = clients["c0"].get("/v1/status").json()
    # Assert: all four unmasked each round; the sum's noise is z C, the mean's z C / 4
    assert sent == dict.fromkeys(names, 3) and coordinator.state.version == 3
    assert not [s for s in coordinator.pipeline.steps if s.stage == Stage.CENTRAL_NOISE]
    assert_ledger_and_epsilon(coordinator, status, clients=4, rounds=3)
    assert_noise_landed(coordinator, names, denominator=4)
    with coordinator.store.session() as session:
        assert [v.metrics["accepted"] for v in session.scalars(select(db.VersionRow)) if v.version] == [4, 4, 4]


def test_target_epsilon_stops_opening_rounds_before_the_budget_is_passed(tmp_path):
    # Prepare: a budget between two rounds' epsilon and three rounds'; six rounds asked for
    names = ("alice", "bob", "carol")
    eps = reference_epsilons(3, 3)
    target = (eps[1] + eps[2]) / 2
    run = run_config(3, federation={"rounds": 6, "clients_per_round": 3, "sampling": "fixed"},
                     privacy={"noise_multiplier": Z, "target_epsilon": target})
    # Execute: the clients keep polling until the coordinator says the run is finished
    coordinator, clients, sent = serve_and_join(tmp_path, run, names)
    status = clients["alice"].get("/v1/status").json()
    # Assert: two rounds, the third never opened, epsilon within the budget, the reason recorded
    assert sent == dict.fromkeys(names, 2)
    assert (coordinator.state.rounds_done, coordinator.state.version, coordinator.rnd) == (2, 2, None)
    assert status["finished"] is True and status["open_round"] is None
    assert status["privacy"]["epsilon"] == pytest.approx(eps[1], rel=1e-9) and eps[1] <= target < eps[2]
    assert "privacy.target_epsilon" in status["privacy"]["stop_reason"]
    with coordinator.store.session() as session:
        assert session.get(db.RoundRow, 3) is None
        assert [a.round for a in session.scalars(select(db.AuditRow).where(db.AuditRow.event == "budget_exhausted"))] == [2]
    # and a coordinator restarted on the same store still opens no round: the ledger came back with the state
    coordinator.store.dispose()
    restarted = dp_coordinator(tmp_path, run)
    for name in names:
        restarted.register(name, Traits())
    restarted.tick()
    assert restarted.finished and restarted.rnd is None and len(restarted.state.ledger.entries) == 2
