"""The coordinator's canary gate: a mixin of service.coordinator.Coordinator (see service.registry for the policy).

Every committed version is scored on registry.eval_data (overall and per sub-folder) and
compared with production; one worse by more than registry.canary_margin, overall or on any
slice, is held, and with registry.on_regression = "rollback" training goes back to a copy
of production committed as the next version.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from fedlm.server.rounds import ServerState
from fedlm.service import store as db
from fedlm.service.payloads import decode_state
from fedlm.service.registry import as_evaluation, regressed_slices, should_promote

log = logging.getLogger("fedlm.service")


class CanaryGate:
    """Needs the coordinator's evaluator, registry, blobs and _commit_version."""

    def _evaluate(self, vector: np.ndarray) -> dict[str, Any]:
        """The canary gate's figures of a version: eval_loss, and eval_slices per sub-folder of registry.eval_data
        (nothing without an evaluator). Version 0 is scored too, so the gate always has production's figures."""
        if self.evaluator is None:
            return {}
        evaluation = as_evaluation(self.evaluator(vector))
        return {"eval_loss": evaluation.loss, **({"eval_slices": evaluation.slices} if evaluation.slices else {})}

    def _commit_new_version(self, session: Any, state: ServerState, round: int, metrics: dict[str, Any]) -> ServerState:
        """Commit the round's version through the canary gate; returns the state training goes on from (the new version,
        or with registry.on_regression = "rollback" and a regression, a copy of the production version)."""
        production = db.production_version(session)
        production_row = session.get(db.VersionRow, production) if production is not None else None
        before = dict(production_row.metrics) if production_row is not None else {}
        margin = self.registry.canary_margin
        worse = not should_promote(metrics.get("eval_loss"), before.get("eval_loss"), margin)
        slices = regressed_slices(metrics.get("eval_slices") or {}, before.get("eval_slices") or {}, margin)
        promote = not worse and not slices
        self._commit_version(session, state, round=round, metrics=metrics, status="promoted" if promote else "held")
        if promote:
            db.set_production(session, state.version)
            return state
        what = ", ".join(([f"overall {metrics['eval_loss']:.4f} vs {before['eval_loss']:.4f}"] if worse else [])
                         + [f"slice {name} {metrics['eval_slices'][name]:.4f} vs {before['eval_slices'][name]:.4f}"
                            for name in slices])
        db.audit(session, "canary_held", round=round, detail=f"v{state.version} worse than production v{production} "
                 f"by more than the margin {margin:g}: {what}")
        log.warning("round %d: version %d not promoted (worse than production v%d: %s)", round, state.version, production,
                    what, extra={"round": round, "version": state.version})
        if self.registry.on_regression != "rollback":
            return state
        return self._restore(session, state, production_row, round)

    def _restore(self, session: Any, held: ServerState, production: db.VersionRow, round: int) -> ServerState:
        """registry.on_regression = "rollback": the next version is production's model and optimizer state again, so
        the next round trains from it. Spent privacy stays spent (the ledger, rounds done and clip norm go on)."""
        saved = decode_state(self.blobs.read(production.state_sha256))
        restored = replace(saved, version=held.version + 1, rounds_done=held.rounds_done, clip_norm=held.clip_norm,
                           ledger=held.ledger)
        figures = {k: production.metrics[k] for k in ("eval_loss", "eval_slices") if k in production.metrics}
        self._commit_version(session, restored, round=round, status="restored",  # the same model: production's figures
                             metrics={"restored_from": production.version, "rolled_back": held.version, **figures})
        db.audit(session, "canary_rollback", round=round, detail=f"v{held.version} rolled back: training goes on from "
                 f"v{restored.version}, a copy of production v{production.version}")
        log.warning("round %d: rolled back to production v%d (as v%d)", round, production.version, restored.version,
                    extra={"round": round, "version": restored.version})
        return restored
