"""Each alert on worked numbers: when it fires, what it says, and that 0 (or -1) turns it off."""

from __future__ import annotations

import math

import pytest

from fedlm.monitoring.alerts import (
    describe_alert, drift_alerts, make_alert, opposed_alerts, outlier_alerts, participation_alerts, slice_regressions,
)


def test_outlier_update_names_the_client_whose_norm_is_far_above_the_median():
    # Prepare: median 1.0, MAD 0.1 -> scale 0.148 (above the 10% floor); 3.0 is 13.5 scales above
    clients, norms = ["a", "b", "c", "d", "e"], [0.9, 1.0, 1.1, 1.0, 3.0]
    # Execute
    alerts = outlier_alerts(7, clients, norms, zscore=3.5)
    # Assert
    assert alerts == [{"kind": "outlier_update", "round": 7, "client": "e", "metric": "norm_zscore",
                       "value": pytest.approx(2.0 / 0.14826), "threshold": 3.5}]
    assert outlier_alerts(7, clients, norms, zscore=0) == []  # off
    assert outlier_alerts(7, clients[:2], norms[3:], zscore=3.5) == []  # two updates cannot be told apart


def test_a_tight_round_needs_a_norm_35_percent_above_the_median():
    # Prepare: MAD 0: the scale is 10% of the median, so the default 3.5 means 1.35 x the median
    clients = ["a", "b", "c", "d"]
    # Execute / Assert
    assert outlier_alerts(1, clients, [1.0, 1.0, 1.0, 1.34], zscore=3.5) == []
    assert [a["client"] for a in outlier_alerts(1, clients, [1.0, 1.0, 1.0, 1.36], zscore=3.5)] == ["d"]


def test_a_small_norm_is_no_outlier():
    assert outlier_alerts(1, ["a", "b", "c", "d"], [1.0, 1.0, 1.0, 0.01], zscore=3.5) == []


def test_opposed_update_below_min_cosine_and_not_for_an_undefined_cosine():
    # Prepare
    clients, cosines = ["a", "b", "c", "d"], [0.5, -0.3, float("nan"), -0.2]
    # Execute
    alerts = opposed_alerts(2, clients, cosines, min_cosine=-0.2)
    # Assert: -0.2 itself is not below -0.2; NaN (a zero update) is not judged; -1 turns the check off
    assert [(a["client"], a["value"], a["threshold"]) for a in alerts] == [("b", -0.3, -0.2)]
    assert opposed_alerts(2, clients, cosines, min_cosine=-1) == []


def test_drift_on_the_median_norm_either_way_and_on_the_train_loss_upward_only():
    # Prepare: earlier norms 1.0, 1.1, 0.9, 1.0, 1.05 -> median 1.0, MAD 0.05, scale 0.0741
    norms, losses = [1.0, 1.1, 0.9, 1.0, 1.05], [3.0, 3.1, 2.9, 3.0, 3.05]  # loss scale 0.0741 as well
    judge = dict(norm_history=norms, loss_history=losses, zscore=4.0, warmup=5)
    # Execute
    low_norm = drift_alerts(9, median_norm=0.6, train_loss=3.0, **judge)
    high_loss = drift_alerts(9, median_norm=1.0, train_loss=3.4, **judge)
    low_loss = drift_alerts(9, median_norm=1.0, train_loss=2.0, **judge)
    # Assert
    assert [(a["metric"], round(a["value"], 2)) for a in low_norm] == [("median_update_norm", -5.4)]
    assert [(a["metric"], round(a["value"], 2)) for a in high_loss] == [("train_loss", 5.4)]
    assert low_loss == []  # a falling loss is what training is for
    assert drift_alerts(9, median_norm=0.6, train_loss=3.4, **{**judge, "warmup": 6}) == []  # history too short
    assert drift_alerts(9, median_norm=0.6, train_loss=3.4, **{**judge, "zscore": 0}) == []  # off
    assert drift_alerts(9, median_norm=None, train_loss=None, **judge) == []  # nothing to judge (SecAgg, DP)


def test_a_plateaued_loss_is_judged_against_half_a_percent_of_its_level():
    # Prepare: five equal losses: MAD 0, scale 0.5% of 4.0 = 0.02
    history = [4.0] * 5
    # Execute / Assert: +0.07 is 3.5 scales (not past 4); +0.09 is 4.5
    assert drift_alerts(6, median_norm=None, train_loss=4.07, norm_history=[], loss_history=history, zscore=4.0, warmup=5) == []
    fired = drift_alerts(6, median_norm=None, train_loss=4.09, norm_history=[], loss_history=history, zscore=4.0, warmup=5)
    assert fired[0]["value"] == pytest.approx(4.5)


def test_participation_drop_against_the_expected_count():
    # Execute / Assert: 2 of 5 is below half; 3 of 6 is not; no cohort or a 0 share: not judged
    assert participation_alerts(4, accepted=2, expected=5, share=0.5) == [
        {"kind": "participation_drop", "round": 4, "metric": "accepted_share", "accepted": 2, "expected": 5,
         "value": 0.4, "threshold": 0.5}]
    assert participation_alerts(4, accepted=3, expected=6, share=0.5) == []
    assert participation_alerts(4, accepted=0, expected=0, share=0.5) == []
    assert participation_alerts(4, accepted=0, expected=5, share=0) == []


def test_slice_regression_against_each_slices_reference():
    # Prepare: overall rose 4% (under 5%), site:a 10%, site:b fell, site:c has no reference yet
    losses = {"overall": 2.08, "site:a": 3.3, "site:b": 1.0, "site:c": 9.0}
    reference = {"overall": 2.0, "site:a": 3.0, "site:b": 1.5}
    # Execute
    alerts = slice_regressions(5, losses, reference, threshold=0.05)
    # Assert
    assert alerts == [{"kind": "slice_regression", "round": 5, "slice": "site:a", "metric": "relative_loss_rise",
                       "loss": 3.3, "reference": 3.0, "value": pytest.approx(0.1), "threshold": 0.05}]
    assert slice_regressions(5, losses, reference, threshold=0) == []


def test_an_alert_is_a_small_dict_and_one_log_line():
    # Prepare
    alert = make_alert("outlier_update", 3, client="site-7", metric="norm_zscore", value=12.345678, threshold=3.5)
    # Execute
    line = describe_alert(alert)
    # Assert
    assert line == "monitoring alert outlier_update: round 3 client site-7: norm_zscore 12.35 (threshold 3.5)"
    assert make_alert("drift", 1, value=math.inf, threshold=4.0)["value"] is None  # JSON has no infinity
    with pytest.raises(ValueError, match="unknown alert kind"):
        make_alert("weird", 1, value=0.0, threshold=0.0)
