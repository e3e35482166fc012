"""SecAgg+ through the coordinator's HTTP API, in process: exact sums, dropouts, abandoned rounds, restarts.

Prepare / Execute / Assert. The committed global is compared bit for bit with
rounds.accept_sum on the plain sum of the parties' quantized inputs (see secagg_parties).
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from fedlm.service import store as db

from conftest import INITIAL, build_service
from secagg_parties import SECURE, STAGES, open_secure_round, reference_global, run_stages

FOUR = ("c0", "c1", "c2", "c3")
FIVE = (*FOUR, "c4")


@pytest.fixture
def secure_service(tmp_path):
    return build_service(tmp_path, f"sqlite:///{tmp_path / 'secagg.db'}", names=(*FIVE, "zed"), clients_per_round=4,
                         overrides=SECURE)


def test_task_offer_carries_the_stage_and_round_parameters(secure_service):
    parties = open_secure_round(secure_service, FOUR)
    task = parties["c0"].task
    # k = n - 1 = 3 neighbours; t = floor(0.5 * 3) + 1 = 2; the bound is the clip norm (no noise share)
    assert task["stage"] == "advertise"
    assert task["secagg"] == {"cohort": list(FOUR), "neighbours": ["c1", "c2", "c3"], "threshold": 2, "size": 6,
                              "bound": 10.0, "clients": 4, "step": 0.0}


def test_secure_round_commits_the_mean_of_the_quantized_inputs_exactly(secure_service):
    # Prepare
    parties = open_secure_round(secure_service, FOUR)
    # Execute
    run_stages(parties)
    # Assert: the same bits as accept_sum on the plain sum of the quantized inputs, and the uniform mean moved the global
    coordinator = secure_service.coordinator
    expected = reference_global(secure_service, parties, FOUR)
    assert coordinator.state.version == 1 and coordinator.rnd is None
    assert coordinator.state.global_vector.tobytes() == expected.tobytes()
    plain_mean = np.mean([p.client_state.params.encoding.decode_sum(p.encoded) for p in parties.values()], axis=0)
    np.testing.assert_allclose(coordinator.state.global_vector, INITIAL + plain_mean, atol=1e-6)
    with coordinator.store.session() as session:
        version = session.get(db.VersionRow, 1)
        assert version.metrics["accepted"] == 4 and version.metrics["train_loss"] == pytest.approx(1.2)
        assert db.tasks_of(session, 1) == dict.fromkeys(FOUR, "accepted")
        kinds = [m.kind for m in db.secagg_messages(session, 1)]
        assert kinds == (["advert"] * 4 + ["close"] + ["shares"] * 4 + ["close"] + ["masked"] * 4 + ["close"]
                         + ["confirm"] * 4 + ["close"] + ["unmask"] * 4)
        stored = [u.sha256 for u in db.accepted_updates(session, 1)]
    # what the server stored is the masked vector, never the encoded input
    for sha, party in zip(stored, parties.values(), strict=True):
        assert party.encoded.tobytes() not in coordinator.blobs.read(sha)


def test_a_client_dropping_after_sharing_keys_is_recovered(tmp_path):
    # Prepare: five clients, k = 4, t = 3; c4 shares its keys, then never uploads
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'drop.db'}", names=FIVE, clients_per_round=5, overrides=SECURE)
    parties = open_secure_round(service, FIVE)
    # Execute: the mask stage closes at its deadline without c4
    run_stages(parties, silent={"c4": "mask"})
    # Assert: the sum of the four survivors, with c4's pairwise masks removed from its recovered key
    coordinator = service.coordinator
    assert coordinator.state.version == 1
    assert coordinator.state.global_vector.tobytes() == reference_global(service, parties, FOUR).tobytes()
    with coordinator.store.session() as session:
        assert db.tasks_of(session, 1) == {**dict.fromkeys(FOUR, "accepted"), "c4": "failed"}
        assert session.get(db.VersionRow, 1).metrics["accepted"] == 4


def test_a_survivor_silent_at_the_confirm_stage_stays_in_the_sum(tmp_path):
    # Prepare: five clients, k = 4, t = 3; c4 uploads its masked input, then never signs the survivor sets
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'confirm.db'}", names=FIVE, clients_per_round=5, overrides=SECURE)
    parties = open_secure_round(service, FIVE)
    # Execute: the confirm stage closes at its deadline with four signatures; each of the four sees three
    run_stages(parties, silent={"c4": "confirm"})
    # Assert: c4's input is in the sum (its self mask removed with the others' seed shares); it sent nothing more
    coordinator = service.coordinator
    assert coordinator.state.version == 1
    assert coordinator.state.global_vector.tobytes() == reference_global(service, parties, FIVE).tobytes()
    with coordinator.store.session() as session:
        kinds = [(m.kind, m.client_id) for m in db.secagg_messages(session, 1)]
        assert ("confirm", "c4") not in kinds and ("unmask", "c4") not in kinds and ("masked", "c4") in kinds


def test_too_many_drops_abandon_the_round_and_the_next_round_runs(secure_service):
    # Prepare: four clients need three answers per stage (t = 2, t + 1 = 3); two fall silent after advertising
    parties = open_secure_round(secure_service, FOUR)
    # Execute
    run_stages(parties, stages=("advertise", "share"), silent={"c2": "share", "c3": "share"})
    # Assert: round 1 abandoned, nothing released, the version unchanged
    coordinator = secure_service.coordinator
    assert coordinator.rnd is None and coordinator.state.version == 0 and coordinator.state.rounds_done == 1
    assert coordinator.state.global_vector.tobytes() == INITIAL.tobytes()
    with coordinator.store.session() as session:
        row = session.get(db.RoundRow, 1)
        assert (row.status, row.stage) == ("closed", "abandoned")
        assert db.tasks_of(session, 1) == dict.fromkeys(FOUR, "failed")
        assert session.get(db.VersionRow, 1) is None
    # and round 2 runs to a new version
    secure_service.clock.now += 1
    parties = open_secure_round(secure_service, FOUR)
    assert parties["c0"].task["round"] == 2
    run_stages(parties)
    assert coordinator.state.version == 1 and coordinator.state.rounds_done == 2
    assert coordinator.state.global_vector.tobytes() == reference_global(secure_service, parties, FOUR).tobytes()


@pytest.mark.parametrize("stage", STAGES)
def test_a_restart_mid_stage_continues_the_round_to_the_same_result(secure_service, stage):
    # Prepare: every stage before `stage` done; half the clients answered `stage`
    parties = open_secure_round(secure_service, FOUR)
    run_stages(parties, stages=STAGES[: STAGES.index(stage)])
    for name in FOUR[:2]:
        assert parties[name].act(stage).status_code == 200
    before = secure_service.coordinator.secure
    secure_service.coordinator.store.dispose()
    # Execute: a fresh coordinator on the same database and blobs replays the log
    restarted = secure_service.restart()
    replayed = restarted.secure
    for name in FOUR[2:]:
        assert parties[name].act(stage).status_code == 200
    run_stages(parties, stages=STAGES[STAGES.index(stage) + 1:])
    # Assert
    assert (replayed.graph, replayed.threshold) == (before.graph, before.threshold)
    assert restarted.state.version == 1
    assert restarted.state.global_vector.tobytes() == reference_global(secure_service, parties, FOUR).tobytes()
    with restarted.store.session() as session:
        assert any(a.event == "recovered" for a in session.scalars(select(db.AuditRow)))


def test_restart_replays_a_logged_close_that_fails_into_an_abandoned_round(secure_service, monkeypatch):
    # Prepare: the share close is logged, then the process dies before it can abandon the round
    parties = open_secure_round(secure_service, FOUR)
    run_stages(parties, stages=("advertise",))
    for name in FOUR[:2]:
        parties[name].share()

    def die(self, reason):
        raise SystemExit("killed")

    monkeypatch.setattr(type(secure_service.coordinator), "_abandon", die)
    secure_service.clock.now = secure_service.coordinator.round_row.deadline + 1
    with pytest.raises(SystemExit):
        secure_service.coordinator.tick()
    monkeypatch.undo()
    # Execute
    restarted = secure_service.restart()
    # Assert: the replayed close fails the same way; the round ends abandoned, the version unchanged
    assert restarted.rnd is None and restarted.state.version == 0 and restarted.state.rounds_done == 1
    with restarted.store.session() as session:
        assert session.get(db.RoundRow, 1).stage == "abandoned"


def test_distributed_dp_abandons_a_round_whose_survivors_carry_too_little_noise(tmp_path):
    # Prepare: five clients each add a fifth of the noise; the budget fits one full round,
    # not one whose sum carries only four shares (z * sqrt(4/5))
    from fedlm.config import apply_overrides as override
    from fedlm.privacy.plan import make_privacy_plan
    from conftest import DP_POPULATION

    dp = {**SECURE, "privacy": {"noise_multiplier": 1.0, "placement": "distributed"}}
    run = override(service_run(5), dp)
    plan = make_privacy_plan(run.privacy, run.federation, DP_POPULATION)
    full = plan.epsilon(plan_ledger(plan, 5))
    short = plan.epsilon(plan_ledger(plan, 4))
    assert full < short
    target = {"privacy": {"noise_multiplier": 1.0, "placement": "distributed", "target_epsilon": (full + short) / 2}}
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'dp.db'}", names=FIVE, clients_per_round=5,
                            overrides={**SECURE, **target})
    parties = open_secure_round(service, FIVE)
    # Execute: c4 shares its keys, then never uploads; the mask stage closes at its deadline
    run_stages(parties, stages=("advertise", "share", "mask"), silent={"c4": "mask"})
    # Assert: abandoned before any unmask share was asked for; nothing released, nothing spent
    coordinator = service.coordinator
    assert coordinator.rnd is None and coordinator.state.version == 0 and coordinator.state.ledger.entries == ()
    assert parties["c0"].http.get("/v1/rounds/1/secagg/unmask-request").status_code == 409
    with coordinator.store.session() as session:
        assert session.get(db.RoundRow, 1).stage == "abandoned"
        audit = session.scalars(select(db.AuditRow).where(db.AuditRow.event == "round_abandoned")).all()
        assert "noise shares arrived" in audit[0].detail
    # and a round with every share commits and spends the budget it was sized for
    service.clock.now += 1
    parties = open_secure_round(service, FIVE)
    run_stages(parties)
    assert coordinator.state.version == 1 and len(coordinator.state.ledger.entries) == 1


def service_run(clients: int):
    from fedlm.config import RunConfig, apply_overrides as override

    return override(RunConfig(), {"model": {"name": "tiny"}, "federation": {"rounds": 3, "clients_per_round": clients}})


def plan_ledger(plan, arrived: int):
    from fedlm.privacy.ledger import PrivacyLedger

    return PrivacyLedger().record(1, plan.round_event(arrived=arrived))
