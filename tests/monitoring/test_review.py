"""A round's verdict from its watch and its published metrics, and the history the next round is judged against."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.monitoring.history import HISTORY_ROUNDS, MonitorHistory, advance, history_from_records, slice_losses
from fedlm.monitoring.review import UNDER_DP, UNDER_SECAGG, per_client_unavailable, review_round
from fedlm.monitoring.settings import MonitoringSettings
from fedlm.monitoring.sketch import make_sketcher
from fedlm.monitoring.watch import observe, open_watch
from fedlm.settings_checks import ConfigError

SETTINGS = MonitoringSettings()


def watched(vectors: dict[str, np.ndarray]):
    size = len(next(iter(vectors.values())))
    watch = open_watch(make_sketcher(size, seed=0), len(vectors))
    for client, vector in vectors.items():
        observe(watch, client, np.asarray(vector, np.float32))
    return watch


HONEST = {"a": [1.0, 0.1, 0.0, 0.2], "b": [0.9, 0.0, 0.1, 0.1], "c": [1.1, 0.2, 0.0, 0.0], "d": [1.0, 0.0, 0.2, 0.1]}


def test_a_round_with_a_poisoned_update_gets_its_figures_and_both_per_client_alerts():
    # Prepare: four similar updates and one sign-flipped, ten times larger
    watch = watched({**HONEST, "e": [-10.0, -1.0, 0.0, -2.0]})
    record = {"round": 3, "accepted": 5, "train_loss": 2.0, "eval": {"loss": 1.9, "tokens": 10}}
    # Execute
    review = review_round(record, watch=watch, history=MonitorHistory(), settings=SETTINGS, expected=5)
    # Assert
    assert [(a["kind"], a["client"]) for a in review.alerts] == [("outlier_update", "e"), ("opposed_update", "e")]
    monitor = review.monitor
    assert monitor["per_client"] and monitor["updates"] == 5 and monitor["alerts"] == 2
    assert monitor["norm"]["max"] == pytest.approx(np.linalg.norm([10.0, 1.0, 0.0, 2.0]), rel=1e-6)
    assert monitor["cosine"]["min"] < -0.9 < 0.9 < monitor["cosine"]["max"]
    assert review.history == MonitorHistory((monitor["norm"]["median"],), (2.0,), {"overall": 1.9})


def test_where_per_client_figures_are_unavailable_only_the_aggregate_checks_run():
    # Prepare: the same poisoned round, but under DP; 2 of 5 expected arrived and the overall slice regressed
    watch = watched({**HONEST, "e": [-10.0, -1.0, 0.0, -2.0]})
    record = {"round": 3, "accepted": 2, "train_loss": 2.0, "eval_loss": 2.5}
    history = MonitorHistory(best_slices={"overall": 2.0})
    # Execute
    review = review_round(record, watch=watch, history=history, settings=SETTINGS, expected=5, unavailable=UNDER_DP)
    # Assert: no norm, cosine or client anywhere; the history gains no median norm
    assert review.monitor == {"per_client": False, "unavailable": UNDER_DP, "alerts": 2}
    assert [a["kind"] for a in review.alerts] == ["participation_drop", "slice_regression"]
    assert all("client" not in a for a in review.alerts)
    assert review.history.median_norms == () and review.history.train_losses == (2.0,)


def test_why_per_client_figures_are_unavailable():
    assert per_client_unavailable(secure=True, noise_multiplier=0.0) == UNDER_SECAGG
    assert per_client_unavailable(secure=True, noise_multiplier=1.0) == UNDER_SECAGG
    assert per_client_unavailable(secure=False, noise_multiplier=0.3) == UNDER_DP
    assert per_client_unavailable(secure=False, noise_multiplier=0.0) is None


def test_the_history_keeps_the_last_rounds_and_each_slices_best():
    # Prepare
    history = MonitorHistory()
    # Execute
    for round in range(HISTORY_ROUNDS + 5):
        history = advance(history, median_norm=float(round), train_loss=None if round % 2 else float(round),
                          slices={"overall": float(abs(round - 10))})
    # Assert: norms bounded to the last HISTORY_ROUNDS; a round without a loss leaves the losses alone
    assert history.median_norms == tuple(float(r) for r in range(5, HISTORY_ROUNDS + 5))
    assert history.train_losses[-1] == float(HISTORY_ROUNDS + 4 - (HISTORY_ROUNDS + 4) % 2)
    assert history.best_slices == {"overall": 0.0}


def test_slice_losses_read_the_simulation_record_and_the_service_metrics():
    # Prepare
    sim_record = {"eval": {"loss": 2.0, "tokens": 100},
                  "sites": {"by_site": {"north": {"loss": 2.5, "tokens": 40}, "south": {"loss": float("nan"), "tokens": 0}}}}
    service_metrics = {"eval_loss": 1.5}
    # Execute / Assert: a site with no tokens is no slice
    assert slice_losses(sim_record) == {"overall": 2.0, "site:north": 2.5}
    assert slice_losses(service_metrics) == {"overall": 1.5}
    assert slice_losses({"train_loss": 3.0}) == {}


def test_history_from_records_is_the_history_the_rounds_built():
    # Prepare: three metrics lines, the second under secure aggregation (no per-client figures)
    records = [
        {"round": 1, "train_loss": 3.0, "eval": {"loss": 2.8, "tokens": 9}, "monitor": {"per_client": True, "norm": {"median": 0.5}}},
        {"round": 2, "train_loss": 2.9, "eval": {"loss": 2.7, "tokens": 9}, "monitor": {"per_client": False, "alerts": 0}},
        {"round": 3, "train_loss": None, "eval": {"loss": 2.9, "tokens": 9}, "monitor": {"per_client": True, "norm": {"median": 0.4}}},
    ]
    # Execute
    history = history_from_records(records)
    # Assert
    assert history == MonitorHistory((0.5, 0.4), (3.0, 2.9), {"overall": 2.7})


def test_settings_refuse_values_out_of_range():
    with pytest.raises(ConfigError, match="monitoring.min_cosine"):
        MonitoringSettings(min_cosine=-1.5)
    with pytest.raises(ConfigError, match="monitoring.drift_warmup"):
        MonitoringSettings(drift_warmup=0)
