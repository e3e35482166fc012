"""Metrics lines to charts: parsing with line numbers, flattening nested keys, grouping, references and alerts."""

from __future__ import annotations

import pytest

from fedlm.report.records import alert_text, flatten, parse_metrics_lines
from fedlm.report.series import alert_marks, run_charts

RECORDS = [
    {"round": 1, "cohort": 4, "accepted": 4, "failed": 0, "train_loss": 5.5, "epsilon": 1.25,
     "eval": {"loss": 5.25, "perplexity": 190.5},
     "sites": {"by_site": {"north": {"loss": 5.0}, "south": {"loss": 5.5}}, "worst_site": "south"},
     "monitor": {"update_norm": {"p10": 0.5, "p50": 1.0, "p90": 2.0}, "clipped_share": 0.25, "alerts": []}},
    {"round": 2, "cohort": 4, "accepted": 3, "failed": 1, "train_loss": None, "epsilon": 2.5,
     "eval": {"loss": 5.0, "perplexity": 148.4},
     "sites": {"by_site": {"north": {"loss": 4.75}, "south": {"loss": 5.25}}, "worst_site": "south"},
     "monitor": {"update_norm": {"p10": 0.75, "p50": 1.5, "p90": 9.0}, "clipped_share": 0.5,
                 "alerts": [{"kind": "outlier_update", "zscore": 5.5}]}},
]


def charts_by_key(records, config=None):
    return {chart.key: chart for chart in run_charts(records, config or {})}


def test_flatten_names_every_nested_number_by_its_path_and_skips_the_rest():
    # Prepare
    record = {"round": 3, "eval": {"loss": 2.5, "slices": {"a": {"n": 7}}}, "flag": True, "note": None, "name": "x",
              "q": [0.5, 1.5], "alerts": [{"kind": "drift", "value": 9.0}]}
    # Execute
    flat = flatten(record)
    # Assert
    assert flat == {("round",): 3, ("eval", "loss"): 2.5, ("eval", "slices", "a", "n"): 7, ("q", "0"): 0.5, ("q", "1"): 1.5}


def test_each_metric_becomes_a_series_with_exactly_its_values_and_none_where_a_round_lacks_it():
    # Execute
    charts = charts_by_key(RECORDS)
    # Assert
    assert charts["eval.loss"].series[0].points == ((1, 5.25), (2, 5.0))
    assert charts["train_loss"].series[0].points == ((1, 5.5), (2, None))
    assert charts["monitor.clipped_share"].series[0].points == ((1, 0.25), (2, 0.5))
    assert "round" not in charts  # the x axis, not a series


def test_groups_quantiles_and_slices_share_a_chart_with_a_line_each():
    # Execute
    charts = charts_by_key(RECORDS)
    # Assert
    participation = charts["participation"]
    assert [(s.label, s.points) for s in participation.series] == [
        ("cohort", ((1, 4), (2, 4))), ("accepted", ((1, 4), (2, 3))), ("failed", ((1, 0), (2, 1)))]
    norms = charts["monitor.update_norm"]
    assert [(s.label, s.points[1][1]) for s in norms.series] == [("p10", 0.75), ("p50", 1.5), ("p90", 9.0)]
    per_site = charts["sites.by_site.*.loss"]
    assert [(s.label, s.path, s.points) for s in per_site.series] == [
        ("north", ("sites", "by_site", "north", "loss"), ((1, 5.0), (2, 4.75))),
        ("south", ("sites", "by_site", "south", "loss"), ((1, 5.5), (2, 5.25)))]
    assert per_site.section == "Evaluation" and norms.section == "Update monitor" and participation.section == "Participation"


def test_a_dict_of_same_shaped_dicts_is_read_as_slices_whatever_its_name():
    # Prepare
    records = [{"round": 1, "eval": {"held_out": {"loss": 2.0, "accuracy": 0.5}, "own": {"loss": 1.0, "accuracy": 0.75}}}]
    # Execute
    charts = charts_by_key(records)
    # Assert
    assert [(s.label, s.points) for s in charts["eval.*.loss"].series] == [("held_out", ((1, 2.0),)), ("own", ((1, 1.0),))]
    assert set(charts) == {"eval.*.loss", "eval.*.accuracy"}


def test_a_metric_no_code_knows_gets_a_chart_in_other_metrics():
    # Prepare
    records = [{"round": 1, "new_metric": {"sub": 3.5}}, {"round": 2}]
    # Execute
    charts = charts_by_key(records)
    # Assert
    assert charts["new_metric.sub"].section == "Other metrics"
    assert charts["new_metric.sub"].series[0].points == ((1, 3.5), (2, None))


def test_epsilon_is_drawn_against_the_configured_target_only_when_one_is_set():
    # Execute
    with_target = charts_by_key(RECORDS, {"privacy": {"target_epsilon": 8.0}})["epsilon"]
    without = charts_by_key(RECORDS, {"privacy": {"target_epsilon": 0.0}})["epsilon"]
    # Assert
    assert [(r.label, r.value) for r in with_target.references] == [("target ε (privacy.target_epsilon)", 8.0)]
    assert without.references == ()


def test_lines_without_a_round_are_placed_by_their_position():
    # Prepare
    records = [{"loss": 1.0}, {"loss": 0.5}]
    # Execute
    chart = charts_by_key(records)["loss"]
    # Assert
    assert chart.series[0].points == ((1, 1.0), (2, 0.5))


def test_alerts_become_marks_at_their_round_in_words():
    # Execute
    marks = alert_marks(RECORDS)
    # Assert
    assert marks == [(2, "round 2: outlier_update zscore=5.5")]
    assert alert_text("plain words") == "plain words"
    assert alert_text({"client": 3, "value": 0.5}) == "client=3 value=0.5"


def test_parse_reads_every_line_as_a_dict():
    # Execute
    records = parse_metrics_lines('{"round": 1}\n{"round": 2, "eval": {"loss": 1.5}}\n')
    # Assert
    assert records == [{"round": 1}, {"round": 2, "eval": {"loss": 1.5}}]


@pytest.mark.parametrize(("text", "message"), [
    ('{"round": 1}\n\n{"round": 2}\n', "m.jsonl line 2 is empty"),
    ('{"round": 1}\n{"round": 2}\n{"round": 3\n', "m.jsonl line 3 is not valid JSON"),
    ('{"round": 1}\n[1, 2]\n', "m.jsonl line 2 holds a list, not a JSON object"),
    ("", "m.jsonl holds no lines"),
])
def test_parse_refuses_a_blank_damaged_or_non_object_line_by_its_number(text, message):
    # Execute
    with pytest.raises(ValueError) as err:
        parse_metrics_lines(text, "m.jsonl")
    # Assert
    assert message in str(err.value)


def test_a_count_named_alerts_is_a_number_but_an_alerts_list_is_not():
    # Prepare
    record = {"round": 1, "monitor": {"alerts": 2}, "alerts": [{"kind": "drift", "value": 9.0, "threshold": 4.0}]}
    # Execute
    flat = flatten(record)
    # Assert
    assert flat == {("round",): 1, ("monitor", "alerts"): 2}


def test_quantile_lines_run_from_the_lowest_to_the_highest():
    # Prepare
    records = [{"round": 1, "monitor": {"norm": {"max": 4.0, "median": 2.0, "min": 1.0, "q25": 1.5, "q75": 3.0}}}]
    # Execute
    chart = charts_by_key(records)["monitor.norm"]
    # Assert
    assert [(s.label, s.points[0][1]) for s in chart.series] == [
        ("min", 1.0), ("q25", 1.5), ("median", 2.0), ("q75", 3.0), ("max", 4.0)]


def test_an_alert_in_words_leaves_out_its_round():
    # Prepare
    alert = {"kind": "drift", "metric": "median_update_norm", "round": 2, "threshold": 0.5, "value": 3.75}
    # Execute
    text = alert_text(alert)
    # Assert
    assert text == "drift metric=median_update_norm threshold=0.5 value=3.75"
