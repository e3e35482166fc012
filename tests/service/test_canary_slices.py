"""The canary gate per slice: a version that regresses one slice of the evaluation folder is not promoted, and with
registry.on_regression = "rollback" training goes back to the production version (through the service's round path).
"""

from __future__ import annotations

import numpy as np
from conftest import build_service
from test_service_api import DELTA_A, DELTA_B, start_round, upload

from fedlm.service import store as db
from fedlm.service.registry import Evaluation, regressed_slices
from fedlm.updates import wire

# version 0 is scored first; round 1 sets production; round 2 is better overall (0.95 < 1.0) but slice "b" is 0.3
# worse (> margin 0.1)
EVALUATIONS = [Evaluation(2.0, {"a": 2.0, "b": 2.0}), Evaluation(1.0, {"a": 1.0, "b": 1.0}), Evaluation(0.95, {"a": 0.7, "b": 1.3}),
               Evaluation(0.9, {"a": 0.9, "b": 0.9})]


def run_rounds(service, deltas) -> None:
    for round, delta in enumerate(deltas, start=1):
        tasks = start_round(service)
        for name in ("alice", "bob"):
            version = tasks[name]["version"]
            assert upload(service, name, wire.serialize_dense(delta), round=round, version=version).status_code == 200


def test_regressed_slices_by_hand():
    # Assert: worse by more than the margin, a lost slice (NaN), slices missing on one side ignored
    assert regressed_slices({"a": 1.25, "b": 1.05, "c": float("nan"), "d": 9.0}, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.1) == ["a", "c"]
    assert regressed_slices({"a": 1.1}, {"a": 1.0}, 0.1) == []  # exactly the margin is allowed


def test_a_version_that_regresses_one_slice_is_held_and_training_goes_on_from_it_by_default(tmp_path):
    # Prepare
    losses = iter(EVALUATIONS)
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", evaluator=lambda v: next(losses), margin=0.1)
    # Execute
    run_rounds(service, [DELTA_A, DELTA_B])
    # Assert: v2 held on slice b alone; production stays v1; the slice losses are stored with the version
    with service.coordinator.store.session() as session:
        assert [(v.version, v.status) for v in db.versions(session)] == [(0, "promoted"), (1, "promoted"), (2, "held")]
        assert db.production_version(session) == 1
        assert session.get(db.VersionRow, 2).metrics["eval_slices"] == {"a": 0.7, "b": 1.3}
        held = [a.detail for a in session.query(db.AuditRow).filter(db.AuditRow.event == "canary_held")]
    assert len(held) == 1 and "slice b 1.3000 vs 1.0000" in held[0]
    assert service.coordinator.state.version == 2


def test_with_rollback_the_next_round_trains_from_a_copy_of_production_and_spent_rounds_stay_spent(tmp_path):
    # Prepare
    losses = iter(EVALUATIONS)
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", evaluator=lambda v: next(losses), margin=0.1,
                            on_regression="rollback")
    # Execute: round 2 regresses slice b; round 3 then trains
    run_rounds(service, [DELTA_A, DELTA_B])
    coordinator = service.coordinator
    with coordinator.store.session() as session:
        rows = {v.version: (v.status, v.round, dict(v.metrics)) for v in db.versions(session)}
        production = db.production_version(session)
    state = coordinator.state
    # Assert: v3 restores v1 exactly (global vector), rounds done go on, production is still v1
    assert rows[0][2] == {"eval_loss": 2.0, "eval_slices": {"a": 2.0, "b": 2.0}}  # version 0 scored: the gate has a reference
    assert rows[2][0] == "held" and rows[3] == ("restored", 2, {"restored_from": 1, "rolled_back": 2, "eval_loss": 1.0,
                                                                "eval_slices": {"a": 1.0, "b": 1.0}})
    assert production == 1 and state.version == 3 and state.rounds_done == 2
    initial = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 4.0], np.float32)
    np.testing.assert_array_equal(state.global_vector, initial + DELTA_A)  # FedAvg of two equal updates: v1 = v0 + DELTA_A
    # ... the next round's tasks name v3, and its global is the same bytes as production's
    tasks = start_round(service)
    assert {t["version"] for t in tasks.values()} == {3}
    assert service.clients["alice"].get("/v1/models/3/global").content == service.clients["alice"].get("/v1/models/1/global").content
    # ... and a restart continues from v3
    assert service.restart().state.version == 3


def test_the_evaluator_scores_each_sub_folder_and_the_overall_loss_is_over_all_their_tokens(tmp_path):
    # Prepare: an evaluation folder with two slices of different text, and one with slice "a" alone
    from fedlm.assembly import assemble
    from fedlm.config import RunConfig, apply_overrides
    from fedlm.service.registry import make_evaluator

    run = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "data": {"seq_len": 32}})
    parts = assemble(run, population=2)
    texts = {"a": "the quick brown fox jumps over the lazy dog. " * 40, "b": "0123456789 ~!@#$%^&*() " * 60}
    for name, text in texts.items():
        (tmp_path / "both" / name).mkdir(parents=True)
        (tmp_path / "both" / name / "t.txt").write_text(text)
    (tmp_path / "one" / "a").mkdir(parents=True)
    (tmp_path / "one" / "a" / "t.txt").write_text(texts["a"])
    vector = parts.adapter.initial_shared.copy()
    # Execute
    both = make_evaluator(parts, tmp_path / "both", max_sequences=8)(vector)
    alone = make_evaluator(parts, tmp_path / "one", max_sequences=8)(vector)
    # Assert: a loss per slice, the overall between them; one slice gives no slices, and the same loss as in `both`
    assert set(both.slices) == {"a", "b"} and both.slices["a"] != both.slices["b"]
    assert min(both.slices.values()) < both.loss < max(both.slices.values())
    assert alone.slices == {} and alone.loss == both.slices["a"]
