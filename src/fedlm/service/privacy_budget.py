"""What the coordinator reports and enforces of the run's DP plan: epsilon per round, and the budget stop.

The service's side of user-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018,
arXiv:1710.06963), mirroring the simulation (sim.engine.privacy_fields and budget_stop):
epsilon is always dp-accounting's over the ledger's events, and a round that would take
epsilon past privacy.target_epsilon is never opened.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fedlm.privacy.accountant import epsilon_without_sampling
from fedlm.privacy.ledger import PrivacyLedger
from fedlm.privacy.plan import PrivacyPlan
from fedlm.server.rounds import ServerState
from fedlm.service import store as db


# What the reported epsilon assumes about the service's cohorts, which it cannot make true by itself.
SAMPLING_ASSUMPTION = (
    "epsilon assumes every round's cohort is a uniform random sample of scheduling.population clients "
    "(federation.sampling); the coordinator invites the available eligible clients that contributed least "
    "recently, so it holds only as far as that is true. epsilon_without_sampling assumes nothing about who "
    "is chosen: it is the bound if one client took part in every round")


def privacy_fields(plan: PrivacyPlan | None, ledger: PrivacyLedger) -> dict[str, Any]:
    """epsilon (None if unbounded) with its sampling assumption, the bound without it, delta and noise multiplier
    after the ledger's rounds; {} without DP."""
    if plan is None:
        return {}
    epsilon = plan.epsilon(ledger)
    events = [entry.event for entry in ledger.entries]
    unsampled = epsilon_without_sampling(events, delta=plan.delta, accountant=plan.accountant)
    return {"epsilon": epsilon if math.isfinite(epsilon) else None,
            "epsilon_without_sampling": unsampled if math.isfinite(unsampled) else None,
            "delta": plan.delta, "noise_multiplier": plan.noise_multiplier}


def survivors_guard(plan: PrivacyPlan | None, ledger: PrivacyLedger) -> Callable[[int], str | None]:
    """Distributed DP: each survivor carries 1/n of the noise, so dropouts shrink it. Before any
    secret is revealed, this says why a round whose survivors would take epsilon past the target
    must be abandoned (its sum stays masked), or None."""

    def check(survivors: int) -> str | None:
        if plan is None or plan.placement != "distributed" or not plan.target_epsilon:
            return None
        after = ledger.epsilon_if(plan.round_event(arrived=survivors), delta=plan.delta, accountant=plan.accountant)
        if after <= plan.target_epsilon:
            return None
        return (f"only {survivors} of {plan.cohort} clients' noise shares arrived: releasing their sum would take "
                f"epsilon to {after:.3f}, past privacy.target_epsilon = {plan.target_epsilon}")

    return check


def budget_stop(plan: PrivacyPlan | None, ledger: PrivacyLedger, next_round: int) -> str | None:
    """Why round `next_round` may not open (it would take epsilon past the target), or None."""
    return None if plan is None else plan.stop_reason(ledger, next_round)


class PrivacyBudgetReports:
    """The coordinator's privacy reporting (a mixin of service.coordinator.Coordinator): epsilon after the last
    closed round, the bound without the sampling assumption, the budget stop and the ledger table.
    Needs the coordinator's pipeline, state, store and the two memo attributes it sets up."""

    def _budget_spent(self) -> bool:
        return self.budget_stop_reason() is not None

    def budget_stop_reason(self) -> str | None:
        """Why no further round opens under privacy.target_epsilon (None while the budget allows one)."""
        key = (len(self.state.ledger.entries), self.state.rounds_done)
        if self._budget_memo[0] != key:
            self._budget_memo = (key, budget_stop(self.pipeline.privacy, self.state.ledger, self.state.rounds_done + 1))
        return self._budget_memo[1]

    def privacy_report(self) -> dict[str, Any] | None:
        """epsilon after the last closed round (as the ledger table holds it), delta and the budget; None without DP."""
        plan = self.pipeline.privacy
        if plan is None:
            return None
        with self.store.session() as session:
            row = db.latest_ledger_row(session)
            epsilon, rounds = (0.0, 0) if row is None else (row.epsilon, row.round)
        without = self._epsilon_without_sampling(plan)
        return {"epsilon": epsilon if epsilon >= 0 else None, "epsilon_without_sampling": without,
                "sampling_assumption": SAMPLING_ASSUMPTION, "delta": plan.delta, "accounted_through_round": rounds,
                "noise_multiplier": plan.noise_multiplier, "placement": plan.placement,
                "target_epsilon": plan.target_epsilon or None, "stop_reason": self.budget_stop_reason()}

    def _epsilon_without_sampling(self, plan: Any) -> float | None:
        """The bound that assumes nothing about cohort selection, kept per ledger length (accounting costs ~0.1 s)."""
        key = len(self.state.ledger.entries)
        if self._unsampled_memo[0] != key:
            events = [entry.event for entry in self.state.ledger.entries]
            value = epsilon_without_sampling(events, delta=plan.delta, accountant=plan.accountant)
            self._unsampled_memo = (key, value if math.isfinite(value) else None)
        return self._unsampled_memo[1]

    def _record_ledger(self, session: Any, state: ServerState, round: int, epsilon: float | None) -> None:
        """The round's DP event and epsilon so far (-1 when unbounded) in the privacy_ledger table."""
        if self.pipeline.privacy is None or state.ledger.last_round != round:
            return
        entry = PrivacyLedger(state.ledger.entries[-1:]).to_json()
        session.add(db.LedgerRow(round=round, event=entry, epsilon=-1.0 if epsilon is None else epsilon))
