"""The report in headless Chromium: every chart renders, with the run's own numbers, and nothing is fetched.

Skips (saying why) where selenium, chromium or chromedriver is missing: see tests/browser.py.
"""

from __future__ import annotations

import json
from collections import defaultdict

from typer.testing import CliRunner

from fedlm.cli.main import app
from report_markup import numbers

runner = CliRunner()
READ_CHARTS = """
return [...document.querySelectorAll('figure.chart')].map(figure => {
  const svg = figure.querySelector('svg.plot'), box = svg.getBoundingClientRect();
  const centre = el => { const b = el.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2, b.width]; };
  return {key: figure.dataset.chart, box: [box.left, box.top, box.right, box.bottom],
          points: [...svg.querySelectorAll('circle.point')].map(c => ({path: c.dataset.path, x: c.dataset.x, y: c.dataset.y,
                                                                       at: centre(c)})),
          references: [...svg.querySelectorAll('line.reference')].map(l => ({value: l.dataset.value, at: centre(l)})),
          bars: [...svg.querySelectorAll('rect.bar')].map(r => ({label: r.dataset.label, value: r.dataset.value,
                                                                 at: centre(r)}))};
});
"""


def open_report(browser, run_dir, out):
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    browser.get(out.as_uri())
    return browser.execute_script(READ_CHARTS)


def test_every_chart_renders_every_number_of_the_run_where_it_belongs(browser, run_dir, tmp_path):
    # Prepare
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_round = {line["round"]: line for line in lines}
    expected = {(path, line["round"]): value for line in lines for path, value in numbers(line) if path != ("round",)}
    # Execute
    charts = open_report(browser, run_dir, tmp_path / "report.html")
    # Assert
    seen = {}
    for chart in charts:
        left, top, right, bottom = chart["box"]
        assert right - left > 0 and bottom - top > 0, f"{chart['key']} has no size"
        paths = {tuple(json.loads(p["path"])) for p in chart["points"]}
        assert len(chart["points"]) == sum(1 for path, _ in expected if path in paths) > 0, chart["key"]
        for point in chart["points"]:
            path, x = tuple(json.loads(point["path"])), int(point["x"])
            assert float(point["y"]) == expected[(path, x)] == dig(by_round[x], path)
            px, py, width = point["at"]
            assert width > 0 and left <= px <= right and top <= py <= bottom, f"{path} round {x} lies outside its chart"
            seen[(path, x)] = (px, py)
    assert set(seen) == set(expected)  # every number of metrics.jsonl is on the page, once
    assert_positions_follow_values(seen, expected)


def dig(line, path):
    for key in path:
        line = line[key]
    return line


def assert_positions_follow_values(seen, expected):
    """Within one metric, a later round is further right and a higher value higher up (screen y grows downwards)."""
    by_path = defaultdict(list)
    for (path, x), (px, py) in seen.items():
        by_path[path].append((x, expected[(path, x)], px, py))
    for path, rows in by_path.items():
        rows.sort()
        assert all(a[2] < b[2] for a, b in zip(rows, rows[1:])), path
        for a in rows:
            for b in rows:
                if a[1] > b[1]:
                    assert a[3] < b[3], f"{path}: {a[1]} is drawn below {b[1]}"


def test_epsilon_is_drawn_below_the_target_line_and_nothing_is_fetched(browser, run_dir, tmp_path):
    # Prepare
    target = 100.0  # conftest's privacy.target_epsilon
    # Execute
    charts = {chart["key"]: chart for chart in open_report(browser, run_dir, tmp_path / "report.html")}
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
    rows = browser.execute_script("return document.querySelectorAll('table.versions tbody tr').length")
    # Assert
    epsilon = charts["epsilon"]
    [reference] = epsilon["references"]
    assert float(reference["value"]) == target
    assert all(point["at"][1] > reference["at"][1] for point in epsilon["points"])  # every ε under the target
    assert fetched == []
    assert rows == 4  # the base model and versions 1 to 3


def test_an_experiment_report_shows_each_methods_bars_with_its_numbers(browser, tmp_path):
    # Prepare
    results = {"model": "tiny", "methods": [
        {"name": "base", "held_out": {"loss": 5.5, "perplexity": 244.69193226422038}},
        {"name": "fedavg", "held_out": {"loss": 5.25, "perplexity": 190.56626845863}, "fraction_of_centralized_gain": -0.25},
        {"name": "centralized", "held_out": {"loss": 5.0, "perplexity": 148.4131591025766}, "fraction_of_centralized_gain": 1.0},
    ]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    # Execute
    charts = {chart["key"]: chart for chart in open_report(browser, tmp_path, tmp_path / "report.html")}
    # Assert
    assert set(charts) == {"held_out.loss", "held_out.perplexity", "fraction_of_centralized_gain"}
    loss = charts["held_out.loss"]["bars"]
    assert [(b["label"], float(b["value"])) for b in loss] == [("base", 5.5), ("fedavg", 5.25), ("centralized", 5.0)]
    assert loss[0]["at"][2] > loss[1]["at"][2] > loss[2]["at"][2] > 0  # bar widths follow the values
    gain = charts["fraction_of_centralized_gain"]["bars"]
    assert [float(b["value"]) for b in gain] == [-0.25, 1.0] and gain[0]["at"][0] < gain[1]["at"][0]
