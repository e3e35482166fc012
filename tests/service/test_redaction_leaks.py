"""With redaction on, no planted personal value reaches the tokenizer, the update, the store or a log.

Issue 15's end-to-end check, for both drivers: a site folder with an e-mail address, a phone
number, an IBAN and a card number planted in its text. Every byte a run leaves behind (run
directory, the service's database and blobs) and every log record is searched for them.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import FakeClock, client_for
from fedlm.cli.main import app
from fedlm.config import RunConfig, apply_overrides
from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.app import create_app
from fedlm.service.blobs import BlobStore
from fedlm.service.client_worker import Connection, take_part
from fedlm.service.coordinator import Coordinator
from fedlm.service.local_trainer import LocalTrainer
from fedlm.service.scheduling import Traits
from fedlm.service.settings import RegistrySection, SchedulingSection, SecAggSection
from fedlm.service.store import Store
from fedlm.service.tls import with_tls_extension
from fedlm.sim.rundir import METRICS_FILE
from fedlm.updates.build import build_pipeline
from fedlm.work import causal_lm

PLANTED = ("ana.lopez@example.org", "+44 20 7946 0958", "DE89 3704 0044 0532 0130 00", "4111 1111 1111 1111")


def write_site(folder: Path, site: int) -> None:
    folder.mkdir(parents=True)
    lines = [f"Note {i} of site {site}: write to {PLANTED[0]} or call {PLANTED[1]}; refund to IBAN {PLANTED[2]}, "
             f"card {PLANTED[3]} on file." for i in range(12)]
    (folder / "notes.txt").write_text("\n\n".join(lines), encoding="utf-8")


def leaks(texts: list[str] | list[bytes]) -> list[str]:
    """The planted values found in any of `texts` (as text, or as UTF-8 bytes; digits without spaces too)."""
    found = []
    for value in PLANTED:
        forms = {value, value.replace(" ", "")}
        for text in texts:
            data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
            if any(form.encode() in data for form in forms):
                found.append(value)
                break
    return found


def every_file(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def record_tokenizer_input(monkeypatch) -> list[str]:
    """Every text the client work hands the tokenizer (training and evaluation packing), noted as it passes."""
    seen: list[str] = []
    real_pack = causal_lm.pack_texts

    def pack(tokenizer, texts, *args, **kwargs):
        texts = list(texts)
        seen.extend(texts)
        return real_pack(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(causal_lm, "pack_texts", pack)
    return seen


def test_a_simulated_run_keeps_every_planted_value_out_of_the_tokenizer_its_files_and_logs(tmp_path, caplog, monkeypatch):
    # Prepare
    for site in range(3):
        write_site(tmp_path / "sites" / f"site{site}", site)
    out = tmp_path / "run"
    tokenized = record_tokenizer_input(monkeypatch)
    # Execute
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(app, ["simulate", "--model", "tiny", "--data", str(tmp_path / "sites"), "--out",
                                          str(out), "--rounds", "1", "--clients-per-round", "3", "--seq-len", "64", "-q"])
    # Assert: the run used redacted text (the placeholders reached training) and left no value anywhere
    assert result.exit_code == 0, result.output
    assert tokenized and all("<EMAIL>" in text for text in tokenized) and leaks(tokenized) == []
    assert leaks(every_file(out)) == []
    assert leaks([r.getMessage() for r in caplog.records] + [result.output]) == []
    assert '"EMAIL": 36' in (out / "summary.json").read_text()  # 12 lines x 3 sites, counted not quoted
    assert '"redacted": ' in (out / METRICS_FILE).read_text()
    redacted = [json.loads(line)["redacted"] for line in (out / METRICS_FILE).read_text().splitlines()]
    assert redacted == [4 * train_paragraphs(tmp_path / "sites")]  # four values in each training paragraph, 3 sites


def train_paragraphs(sites: Path) -> int:
    """The sites' training paragraphs: the run's own split of the folder (data.test_fraction, run.seed defaults)."""
    from fedlm.data.folders import load_folder

    return sum(len(client.train) for client in load_folder(sites, test_fraction=0.2, seed=0).clients)


def join_through_the_service(tmp_path: Path, run: RunConfig, sites: dict[str, Path]) -> Coordinator:
    """Every site runs `fedlm join`'s loop (config -> LocalTrainer -> take_part) against the real app, in process."""
    from fedlm.assembly import assemble

    certs.init_ca(tmp_path / "certs")
    pipeline = build_pipeline(run.strategy, run.lora, None, None, run.compression)
    initial = assemble(run, population=len(sites)).adapter.initial_shared.copy()
    coordinator = Coordinator(Store(f"sqlite:///{tmp_path / 'service.db'}"), BlobStore(tmp_path / "blobs"), run=run,
                              pipeline=pipeline, initial_global=initial, scheduling=SchedulingSection(deadline_seconds=600.0),
                              registry=RegistrySection(), clock=FakeClock(), secagg=SecAggSection())
    verifier = certs.ClientVerifier(tmp_path / "certs" / certs.CA_CERT, tmp_path / "certs" / certs.CRL)
    app = create_app(coordinator, verifier, max_upload_bytes=2**24, population=len(sites), tick_seconds=0.02)
    errors: list[BaseException] = []

    def site(name: str) -> None:
        try:
            conn = Connection.__new__(Connection)  # the retrying request loop, over the in-process app instead of HTTPS
            conn.http = TestClient(with_tls_extension(app, client_for(app, certs.issue_client(tmp_path / "certs", name)[0]).tls))
            conn.settings, conn.delay = type("Settings", (), {"give_up_after": 30.0})(), lambda attempt: 0.01
            conn.request("POST", "/v1/clients/register", json={})
            trainer = LocalTrainer.build(conn.request("GET", "/v1/config").json(), sites[name], client_id=name, threads=1)
            take_part(conn, name, trainer.train, Traits())
        except BaseException as error:  # noqa: BLE001 - surfaced in the test thread below
            errors.append(error)

    threads = [threading.Thread(target=site, args=(name,), daemon=True) for name in sites]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == [] and not any(t.is_alive() for t in threads)
    return coordinator


def test_fedlm_join_keeps_every_planted_value_out_of_the_tokenizer_the_uploads_the_store_and_the_logs(tmp_path, caplog,
                                                                                                   monkeypatch):
    # Prepare: two sites with planted values; the tokenizer's input is recorded on the client
    sites = {f"site{i}": tmp_path / "data" / f"site{i}" for i in range(2)}
    for i, folder in enumerate(sites.values()):
        write_site(folder, i)
    run = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "data": {"seq_len": 64},
                                        "federation": {"rounds": 1, "clients_per_round": 2},
                                        "client": {"local_steps": 2, "batch_size": 2}})
    tokenized = record_tokenizer_input(monkeypatch)
    # Execute
    with caplog.at_level(logging.DEBUG):
        coordinator = join_through_the_service(tmp_path, run, sites)
    # Assert: the run finished one round; placeholders (not values) reached the tokenizer
    assert coordinator.state.version == 1
    assert len(tokenized) == 24 and all("<EMAIL>" in text and "<IBAN>" in text for text in tokenized)
    assert leaks(tokenized) == []
    # ... and no value is in the database, the blobs (every upload and global) or any log line
    assert leaks([p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "data" not in p.relative_to(tmp_path).parts]) == []
    assert leaks([r.getMessage() for r in caplog.records] + [str(r.__dict__) for r in caplog.records]) == []
    # ... while the round's metrics count what was replaced: 12 paragraphs x 4 values x 2 sites
    with coordinator.store.session() as session:
        latest = session.scalars(select(db.VersionRow).order_by(db.VersionRow.version.desc())).first()
        assert latest.metrics["redacted"] == 96
