"""Tests of the privacy ledger: immutability, ordering, JSON persistence, budget look-ahead."""

from __future__ import annotations

import json

import dp_accounting
import pytest

from fedlm.privacy.accountant import epsilon, gaussian_round_event
from fedlm.privacy.ledger import LedgerEntry, PrivacyLedger

DELTA = 1e-5


def _poisson(z: float = 1.0, q: float = 0.1) -> dp_accounting.DpEvent:
    return gaussian_round_event(noise_multiplier=z, sampling="poisson", sample_rate=q)


def _fixed(z: float = 1.0) -> dp_accounting.DpEvent:
    return gaussian_round_event(noise_multiplier=z, sampling="fixed", population=100, cohort=10)


def _ledger(*events: dp_accounting.DpEvent) -> PrivacyLedger:
    ledger = PrivacyLedger()
    for round_, event in enumerate(events, start=1):
        ledger = ledger.record(round_, event)
    return ledger


def test_empty_ledger_costs_nothing():
    ledger = PrivacyLedger()
    assert ledger.epsilon(delta=DELTA) == 0.0
    assert ledger.epsilon(delta=DELTA, accountant="pld") == 0.0
    assert ledger.last_round is None


def test_record_returns_a_new_ledger_and_leaves_the_old_one():
    # Prepare
    before = _ledger(_poisson())
    snapshot = before.to_json()
    # Execute
    after = before.record(2, _poisson(2.0))
    # Assert
    assert after is not before
    assert before.to_json() == snapshot and len(before.entries) == 1
    assert after.entries == (LedgerEntry(1, _poisson()), LedgerEntry(2, _poisson(2.0)))
    assert after.last_round == 2


@pytest.mark.parametrize(
    ("round_", "event", "message"),
    [
        (3, _poisson(), "round"),  # equal to the last
        (1, _poisson(), "round"),  # before the last
        (-1, _poisson(), "round"),
        (4.0, _poisson(), "round"),
        (True, _poisson(), "round"),
        (4, dp_accounting.LaplaceDpEvent(1.0), "LaplaceDpEvent"),
        (4, dp_accounting.GaussianDpEvent(0.0), "noise_multiplier"),
        (4, "a round", "str"),
        (4, _fixed(), "neighbouring"),  # a Poisson ledger cannot take a fixed-size round
    ],
)
def test_rejected_record_leaves_the_ledger_unchanged(round_, event, message: str):
    # Prepare
    ledger = _ledger(_poisson(), _poisson(), _poisson(1.5))
    snapshot, entries = ledger.to_json(), ledger.entries
    # Execute
    with pytest.raises(ValueError, match=message):
        ledger.record(round_, event)
    # Assert
    assert ledger.to_json() == snapshot and ledger.entries == entries


def test_epsilon_of_identical_rounds_equals_the_closed_schedule():
    ledger = _ledger(*[_poisson(1.1, 0.05)] * 40)
    for name in ("rdp", "pld"):
        expected = epsilon(noise_multiplier=1.1, sample_rate=0.05, rounds=40, delta=DELTA, accountant=name)
        assert ledger.epsilon(delta=DELTA, accountant=name) == pytest.approx(expected, rel=1e-12)


def test_epsilon_if_equals_epsilon_after_recording_and_changes_nothing():
    # Prepare
    ledger = _ledger(_poisson(), _poisson(1.3))
    snapshot = ledger.to_json()
    # Execute
    ahead = ledger.epsilon_if(_poisson(0.9), delta=DELTA)
    # Assert
    assert ahead == ledger.record(3, _poisson(0.9)).epsilon(delta=DELTA)
    assert ahead > ledger.epsilon(delta=DELTA)
    assert ledger.to_json() == snapshot
    assert PrivacyLedger().epsilon_if(_poisson(), delta=DELTA) == _ledger(_poisson()).epsilon(delta=DELTA)


@pytest.mark.parametrize(
    "events",
    [
        (_poisson(), _poisson(0.7, 0.25), _poisson(1.0, 1.0)),
        (dp_accounting.ComposedDpEvent([_poisson(), _poisson(2.0)]),
         dp_accounting.SelfComposedDpEvent(_poisson(1.2, 0.01), 7)),
        (_fixed(), dp_accounting.SelfComposedDpEvent(_fixed(1.5), 3), dp_accounting.GaussianDpEvent(4.0)),
    ],
    ids=["poisson", "composed", "fixed"],
)
def test_json_round_trip_is_exact(events):
    # Prepare
    ledger = _ledger(*events)
    # Execute
    text = ledger.to_json()
    back = PrivacyLedger.from_json(text)
    # Assert
    assert back == ledger
    assert back.to_json() == text
    assert back.epsilon(delta=DELTA) == ledger.epsilon(delta=DELTA)
    assert json.loads(text)["version"] == 1


def test_resumed_ledger_continues_the_count():
    # Prepare: rounds 1-3, saved; the run restarts and spends rounds 4-5
    saved = _ledger(_poisson(), _poisson(), _poisson()).to_json()
    # Execute
    resumed = PrivacyLedger.from_json(saved).record(4, _poisson()).record(5, _poisson())
    # Assert
    assert resumed == _ledger(*[_poisson()] * 5)
    assert resumed.epsilon(delta=DELTA) == pytest.approx(
        epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=5, delta=DELTA), rel=1e-12)


def _tampered(**event) -> str:
    return json.dumps({"version": 1, "entries": [{"round": 1, "event": event}]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "JSON"),
        ("[]", "keys"),
        (json.dumps({"version": 2, "entries": []}), "version"),
        (_tampered(type="LaplaceDpEvent", noise_multiplier=1.0), "unknown DP event type"),
        (_tampered(type="os.system", noise_multiplier=1.0), "unknown DP event type"),
        (_tampered(type="GaussianDpEvent"), "keys"),
        (_tampered(type="GaussianDpEvent", noise_multiplier=1.0, extra=1), "keys"),
        (_tampered(type="GaussianDpEvent", noise_multiplier=-1.0), "noise_multiplier"),
        (_tampered(type="GaussianDpEvent", noise_multiplier="1"), "noise_multiplier"),
        (_tampered(type="SelfComposedDpEvent", count=0,
                   event={"type": "GaussianDpEvent", "noise_multiplier": 1.0}), "count"),
        (json.dumps({"version": 1, "entries": [
            {"round": 2, "event": {"type": "GaussianDpEvent", "noise_multiplier": 1.0}},
            {"round": 2, "event": {"type": "GaussianDpEvent", "noise_multiplier": 1.0}}]}), "strictly increase"),
    ],
)
def test_from_json_rejects_what_it_does_not_know(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        PrivacyLedger.from_json(text)
