"""Retrieval through `fedlm join`: the query encoder trains over the service and only its update travels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sqlalchemy import select

from fedlm.config import RunConfig, apply_overrides
from fedlm.service import store as db
from fedlm.updates import wire
from test_redaction_leaks import join_through_the_service

MARKERS = ("zorblax", "quintessimo", "flurbington")  # words no tokenizer input outside the sites holds


def write_documents(folder: Path, site: int) -> None:
    folder.mkdir(parents=True)
    paragraphs = [f"Document {i} of site {site} speaks of {MARKERS[i % 3]}. It has a second sentence; and a third one."
                  for i in range(10)]
    (folder / "docs.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")


def test_fedlm_join_trains_the_query_encoder_and_sends_only_update_vectors(tmp_path, caplog):
    # Prepare: two sites with their own documents; the retrieval kind on the tiny encoder, redaction off.
    sites = {f"site{i}": tmp_path / "data" / f"site{i}" for i in range(2)}
    for i, folder in enumerate(sites.values()):
        write_documents(folder, i)
    run = apply_overrides(RunConfig(), {"model": {"name": "tiny-encoder"}, "task": {"kind": "retrieval"},
                                        "data": {"seq_len": 64}, "redaction": {"enabled": "off"},
                                        "federation": {"rounds": 1, "clients_per_round": 2},
                                        "client": {"local_steps": 2, "batch_size": 4}})
    # Execute
    with caplog.at_level(logging.DEBUG):
        coordinator = join_through_the_service(tmp_path, run, sites)
    # Assert: the round closed with both updates and the global moved.
    assert coordinator.state.version == 1
    assert np.abs(coordinator.state.global_vector).max() > 0
    # ... every stored upload is the wire header and one float32 vector of the update's size: no document, query or
    # embedding, and its metrics are numbers
    size = coordinator.state.global_vector.size
    server_files = [p for p in tmp_path.rglob("*") if p.is_file() and "data" not in p.relative_to(tmp_path).parts]
    with coordinator.store.session() as session:
        rows = session.scalars(select(db.UpdateRow)).all()
        hashes, metrics = [r.sha256 for r in rows], [r.metrics for r in rows]
    uploads = [tmp_path / "blobs" / h[:2] / h[2:] for h in hashes]
    assert len(uploads) == 2 and all(p.stat().st_size == wire.HEADER_BYTES + 4 * size for p in uploads)
    assert all(isinstance(v, int | float) or v is None for m in metrics for v in m.values())
    # ... and no word of any document is in the database, the blobs or a log line.
    found = [m for m in MARKERS for p in server_files if m.encode() in p.read_bytes()]
    logged = [m for m in MARKERS for r in caplog.records if m in r.getMessage() or m in str(r.__dict__)]
    assert found == [] and logged == []


def test_the_coordinators_held_out_evaluation_scores_retrieval_on_each_sites_collection(tmp_path):
    # Prepare: an evaluation folder of two sites' documents; the retrieval kind on the tiny encoder.
    from fedlm.assembly import assemble
    from fedlm.service.registry import make_evaluator

    for i in range(2):
        write_documents(tmp_path / "eval" / f"site{i}", i)
    run = apply_overrides(RunConfig(), {"model": {"name": "tiny-encoder"}, "task": {"kind": "retrieval"},
                                        "data": {"seq_len": 64}, "redaction": {"enabled": "off"}})
    parts = assemble(run, population=2)
    # Execute
    evaluation = make_evaluator(parts, tmp_path / "eval", max_sequences=8)(parts.adapter.initial_shared.copy())
    # Assert: one InfoNCE loss per site over its own collection; the overall lies between them.
    assert set(evaluation.slices) == {"site0", "site1"}
    assert all(np.isfinite(v) and v > 0 for v in evaluation.slices.values())
    assert min(evaluation.slices.values()) <= evaluation.loss <= max(evaluation.slices.values())
