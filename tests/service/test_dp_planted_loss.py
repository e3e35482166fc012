"""Under DP no metric, log line, store row or HTTP response carries an un-noised per-client quantity (issue 16).

A distinctive training loss (and token count) is planted in what a client computes. With
differential privacy on, it must not appear anywhere a run leaves behind: the simulation's run
directory and logs, the service's database, blobs, logs and answers. Without DP the same plant
shows up (the control that shows the plant works and the test can fail).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import client_for
from fedlm.cli.main import app as cli
from fedlm.client import train as client_train
from fedlm.config import RunConfig, apply_overrides
from fedlm.privacy.release import releasable_metrics
from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.app import create_app
from fedlm.service.client_worker import Connection, take_part
from fedlm.service.local_trainer import LocalTrainer
from fedlm.service.scheduling import Traits
from fedlm.service.tls import with_tls_extension
from test_service_privacy import POPULATION, dp_coordinator

PLANTED_LOSS, PLANTED_TOKENS = 7.3105917, 918273
MARKS = ("7.3105917", "918273", "7.3106", "7.311")  # the full values and the loss as a line might round it
DP = {"strategy": {"clip_norm": 1.0, "weighting": "uniform"}, "privacy": {"noise_multiplier": 0.8}}


def plant(monkeypatch) -> None:
    """Every client's local loop reports the planted loss and token count (its update is trained as usual)."""
    real = client_train.train_local

    def planted(*args, **kwargs):
        result = real(*args, **kwargs)
        return dataclasses.replace(result, mean_loss=PLANTED_LOSS, last_loss=PLANTED_LOSS, tokens=PLANTED_TOKENS)

    monkeypatch.setattr(client_train, "train_local", planted)


def found(blobs: list[bytes]) -> set[str]:
    return {mark for mark in MARKS for blob in blobs if mark.encode() in blob}


def test_only_data_free_metrics_are_released_under_dp():
    # Prepare
    metrics = {"train_loss": 2.5, "last_loss": 2.4, "steps": 3.0, "tokens": 96.0, "update_norm": 0.7, "unclipped": 1.0,
               "bytes_up": 4096.0, "redacted": 5.0}
    # Execute / Assert: all without DP; steps and bytes under DP; the adaptive bit only for central placement
    assert releasable_metrics(metrics, dp=False) == metrics
    assert releasable_metrics(metrics, dp=True) == {"steps": 3.0, "bytes_up": 4096.0}
    assert releasable_metrics(metrics, dp=True, adaptive_central=True) == {"steps": 3.0, "unclipped": 1.0, "bytes_up": 4096.0}


def test_distributed_dp_with_adaptive_clipping_is_refused():
    # Execute / Assert: the server would see each client's clipped bit
    with pytest.raises(Exception, match=r"privacy\.adaptive_clip.*distributed"):
        apply_overrides(RunConfig(), {**DP, "privacy": {"noise_multiplier": 0.8, "adaptive_clip": True,
                                                        "placement": "distributed"}, "federation": {"sampling": "fixed"}})


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "control-without-dp"])
def test_a_simulated_run_under_dp_keeps_the_planted_loss_out_of_its_files_and_logs(tmp_path, caplog, monkeypatch, dp):
    # Prepare
    plant(monkeypatch)
    out = tmp_path / "run"
    sets = [f"--set={section}.{key}={value}" for section, values in DP.items() for key, value in values.items()]
    sets = [s.replace("=uniform", '="uniform"') for s in sets] if dp else []
    # Execute
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(cli, ["simulate", "--model", "tiny", "--out", str(out), "--rounds", "2",
                                          "--clients-per-round", "3", "--seq-len", "32", "-q", *sets])
    # Assert
    assert result.exit_code == 0, result.output
    leaks = found([p.read_bytes() for p in out.rglob("*") if p.is_file()]
                  + [r.getMessage().encode() for r in caplog.records] + [result.output.encode()])
    if dp:
        assert leaks == set()
        assert '"train_loss": null' in (out / "metrics.jsonl").read_text()
    else:
        assert MARKS[0] in leaks  # the control: without DP the round reports the (planted) train loss


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "control-without-dp"])
def test_through_the_service_under_dp_the_planted_loss_reaches_no_row_log_or_answer(tmp_path, caplog, monkeypatch, dp):
    # Prepare: two `fedlm join` clients (LocalTrainer on the tiny model, over the real app) with their own text
    plant(monkeypatch)
    names = ("alice", "bob")
    run = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "data": {"seq_len": 32},
                                        "federation": {"rounds": 1, "clients_per_round": 2, "sampling": "fixed"},
                                        "client": {"local_steps": 2, "batch_size": 2}, **(DP if dp else {})})
    from fedlm.assembly import assemble

    size = assemble(run, population=POPULATION).adapter.shared_spec.size
    certs.init_ca(tmp_path / "certs")
    coordinator = dp_coordinator(tmp_path, run, size=size)
    verifier = certs.ClientVerifier(tmp_path / "certs" / certs.CA_CERT, tmp_path / "certs" / certs.CRL)
    app = create_app(coordinator, verifier, max_upload_bytes=2**24, population=POPULATION, tick_seconds=0.02)
    clients = {name: client_for(app, certs.issue_client(tmp_path / "certs", name)[0]) for name in names}
    for name in names:
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "notes.txt").write_text(f"Some ordinary text of {name}.\n\n" * 30)
    errors: list[BaseException] = []

    def join(name: str) -> None:
        try:
            conn = Connection.__new__(Connection)
            conn.http = TestClient(with_tls_extension(app, clients[name].tls))
            conn.settings, conn.delay = type("Settings", (), {"give_up_after": 30.0})(), lambda attempt: 0.01
            conn.request("POST", "/v1/clients/register", json={})
            trainer = LocalTrainer.build(conn.request("GET", "/v1/config").json(), tmp_path / "data" / name,
                                         client_id=name, threads=1)
            take_part(conn, name, trainer.train, Traits())
        except BaseException as error:  # noqa: BLE001 - surfaced below
            errors.append(error)

    # Execute
    with caplog.at_level(logging.DEBUG):
        threads = [threading.Thread(target=join, args=(name,), daemon=True) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        answers = [clients["alice"].get(path).content for path in ("/v1/status", "/metrics")]
    # Assert
    assert errors == [] and coordinator.state.version == 1
    stored = [p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file() and "data" not in p.parts]
    leaks = found(stored + answers + [r.getMessage().encode() for r in caplog.records]
                  + [str(r.__dict__).encode() for r in caplog.records])
    if dp:
        assert leaks == set()
    else:
        assert set(MARKS[:2]) <= leaks  # the control: the stored updates hold each client's loss and tokens
    with coordinator.store.session() as session:  # and each client's count of training sequences only without DP
        counts = {row.num_samples for row in session.query(db.UpdateRow)}
    assert (counts == {1}) if dp else (counts != {1})


def test_under_dp_no_training_client_is_evaluated_on_its_own_text(tmp_path):
    # Assert: per-site evaluation (every site trains) and evaluation clients that train are refused, naming the setting
    with pytest.raises(Exception, match=r"eval\.mode: 'per_site' cannot be combined with differential privacy"):
        apply_overrides(RunConfig(), {**DP, "eval": {"mode": "per_site"}})
    with pytest.raises(Exception, match=r"eval\.held_out_clients: must be true with differential privacy"):
        apply_overrides(RunConfig(), {**DP, "eval": {"held_out_clients": False}})
    # ... and "auto" does not fall back to per-site for a few sites: the run stops before anything is written
    for site in ("a", "b", "c"):
        (tmp_path / "sites" / site).mkdir(parents=True)
        (tmp_path / "sites" / site / "t.txt").write_text("Some text of a site.\n\n" * 20)
    sets = [f"--set={section}.{key}={value}" for section, values in DP.items() for key, value in values.items()]
    result = CliRunner().invoke(cli, ["simulate", "--model", "tiny", "--data", str(tmp_path / "sites"), "--out",
                                      str(tmp_path / "run"), "-q", *[s.replace("=uniform", '="uniform"') for s in sets]])
    assert result.exit_code != 0 and "would pick 'per_site'" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
