"""The SVG charts carry exactly the numbers they are given: points, gaps, references, bars, ticks."""

from __future__ import annotations

import pytest
from report_markup import elements, points

from fedlm.report.svg import Reference, Series, bar_chart, line_chart, nice_ticks, segments, tick_label


def test_every_point_carries_its_round_and_exact_value_and_a_none_breaks_the_line():
    # Prepare
    loss = Series("loss", ((1, 5.5), (2, None), (3, 0.1 + 0.2), (4, 4.25)), ("eval", "loss"))
    # Execute
    html = line_chart(key="eval.loss", title="Evaluation loss", series=[loss])
    # Assert
    assert points(html) == [(("eval", "loss"), 1.0, 5.5), (("eval", "loss"), 3.0, 0.30000000000000004),
                            (("eval", "loss"), 4.0, 4.25)]
    assert [p["data-y"] for p in elements(html, "circle", "point")] == ["5.5", "0.30000000000000004", "4.25"]
    assert len(elements(html, "polyline", "line")) == 2  # round 2 is missing: two runs, 1 and 3-4
    assert [p["title"] for p in elements(html, "circle", "point")][0] == "loss · round 1: 5.5"


def test_non_finite_values_are_not_drawn():
    # Prepare
    points_in = ((1, float("nan")), (2, 3.0), (3, float("inf")), (4, 1.0))
    # Execute
    runs = segments(points_in)
    html = line_chart(key="k", title="k", series=[Series("k", points_in, ("k",))])
    # Assert
    assert runs == [[(2, 3.0)], [(4, 1.0)]]
    assert [(x, y) for _, x, y in points(html)] == [(2.0, 3.0), (4.0, 1.0)]


def test_higher_values_sit_higher_and_later_rounds_further_right():
    # Prepare
    series = Series("eps", ((1, 2.0), (2, 4.0), (3, 3.0)), ("epsilon",))
    # Execute
    circles = elements(line_chart(key="epsilon", title="ε", series=[series]), "circle", "point")
    # Assert
    xs, ys = [float(c["cx"]) for c in circles], [float(c["cy"]) for c in circles]
    assert xs[0] < xs[1] < xs[2]
    assert ys[1] < ys[2] < ys[0]  # SVG y grows downwards: 4.0 on top, then 3.0, then 2.0


def test_a_reference_line_holds_its_value_and_stretches_the_axis_to_it():
    # Prepare
    series = Series("epsilon", ((1, 1.0), (2, 2.0)), ("epsilon",))
    # Execute
    html = line_chart(key="epsilon", title="ε", series=[series], references=[Reference("target ε", 8.0)])
    # Assert
    [line] = elements(html, "line", "reference")
    assert line["data-value"] == "8.0" and line["title"] == "target ε = 8"
    top_point = min(float(c["cy"]) for c in elements(html, "circle", "point"))
    assert 12 <= float(line["y1"]) < top_point  # inside the plot area (TOP = 12), above the highest point (2.0 < 8.0)


def test_alert_marks_stand_at_their_round_with_their_text():
    # Prepare
    series = Series("loss", ((1, 1.0), (2, 2.0), (3, 1.5)), ("train_loss",))
    # Execute
    html = line_chart(key="train_loss", title="t", series=[series], marks=[(2, "round 2: drift")])
    # Assert
    [mark] = elements(html, "line", "alert-mark")
    assert mark["data-x"] == "2" and mark["title"] == "round 2: drift"


def test_labels_are_escaped():
    # Prepare
    series = Series('<b>"site"</b>', ((1, 1.0),), ("sites", "by_site", '<b>"site"</b>', "loss"))
    # Execute
    html = line_chart(key="sites.by_site.*.loss", title="per <site>", series=[series])
    # Assert
    assert '<b>"site"' not in html and "per <site>" not in html
    assert "&lt;b&gt;&quot;site&quot;&lt;/b&gt;" in html and "per &lt;site&gt;" in html
    assert elements(html, "circle", "point")[0]["data-series"] == '<b>"site"</b>'


def test_bars_carry_exact_values_a_none_gets_no_bar_and_a_negative_one_lies_left_of_zero():
    # Prepare
    bars = [("fedavg", 0.375), ("base", None), ("dp", -0.25)]
    # Execute
    html = bar_chart(key="gain", title="gain", bars=bars)
    # Assert
    rects = elements(html, "rect", "bar")
    assert [(r["data-label"], r["data-value"]) for r in rects] == [("fedavg", "0.375"), ("dp", "-0.25")]
    [zero] = elements(html, "line", "zero")
    assert float(rects[0]["x"]) == pytest.approx(float(zero["x1"]), abs=0.01)  # positive: starts at zero
    assert float(rects[1]["x"]) + float(rects[1]["width"]) == pytest.approx(float(zero["x1"]), abs=0.02)  # negative: ends there
    assert [t["x"] for t in elements(html, "text", "bar-label")] == ["144", "144", "144"]  # every label, "base" too


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (5.3, 5.46, [5.3, 5.35, 5.4, 5.45, 5.5]),  # 5.3 / 0.05 is 105.99999999999999: still the first tick
    (3.0, 3.0, [2.8, 2.9, 3.0, 3.1, 3.2]),  # one value: padded by 5 %
    (0.0, 0.0, [-1.0, -0.5, 0.0, 0.5, 1.0]),
])
def test_nice_ticks(lo, hi, expected):
    # Execute
    ticks = nice_ticks(lo, hi)
    # Assert
    assert ticks == expected


@pytest.mark.parametrize(("value", "step", "expected"), [
    (2_500_000, 500_000, "2.5M"), (14_000, 500, "14k"), (0.0007, 0.0001, "0.0007"), (5.35, 0.05, "5.35"), (200, 20, "200"),
])
def test_tick_labels(value, step, expected):
    # Execute
    label = tick_label(value, step)
    # Assert
    assert label == expected
