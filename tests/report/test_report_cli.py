"""`fedlm report RUN_DIR [--out]` on a real tiny run and on an experiment's results: the file, and every refusal."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from report_markup import elements, numbers, points, table_rows
from typer.testing import CliRunner

from fedlm.cli.main import app

runner = CliRunner()
RESULTS = {"model": "tiny", "methods": [
    {"name": "base", "label": "base model", "held_out": {"loss": 5.5}},
    {"name": "fedavg", "label": "FedAvg", "held_out": {"loss": 5.25}, "curve": [{"round": 0, "loss": 5.5}, {"round": 1, "loss": 5.25}]},
]}


def said(result) -> str:
    """The command's output with the console's line wrapping undone."""
    return " ".join(result.output.split())


def copy_run(run_dir, target):
    """The run's text files (no adapter, no checkpoint) in a directory a test may damage."""
    target.mkdir()
    for name in ("metrics.jsonl", "config.toml", "summary.json"):
        shutil.copyfile(run_dir / name, target / name)
    return target


def test_report_plots_every_number_of_the_run_with_its_round(run_dir, tmp_path):
    # Prepare
    run = copy_run(run_dir, tmp_path / "run")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Execute
    result = runner.invoke(app, ["report", str(run)])
    # Assert
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    expected = {(path, float(line["round"]), float(value)) for line in lines for path, value in numbers(line) if path != ("round",)}
    plotted = points(html)
    assert len(plotted) == len(expected) and set(plotted) == expected
    assert any(p == ("epsilon",) for p, _, _ in plotted)


def test_report_plots_every_site_of_a_per_site_run(sites_run_dir, tmp_path):
    # Prepare
    run = copy_run(sites_run_dir, tmp_path / "run")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Execute
    result = runner.invoke(app, ["report", str(run)])
    # Assert: every number, each site's among them
    assert result.exit_code == 0, result.output
    expected = {(path, float(line["round"]), float(value)) for line in lines for path, value in numbers(line) if path != ("round",)}
    plotted = points((run / "report.html").read_text())
    assert set(plotted) == expected and any(path[:2] == ("sites", "by_site") for path, _, _ in plotted)


def test_report_draws_epsilon_against_the_run_target_and_tables_its_versions(run_dir, tmp_path):
    # Prepare
    out = tmp_path / "r.html"
    summary = json.loads((run_dir / "summary.json").read_text())
    # Execute
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(out)])
    # Assert
    assert result.exit_code == 0, result.output
    html = out.read_text()
    [target] = elements(html, "line", "reference")
    assert float(target["data-value"]) == 100.0
    rows = table_rows(html, "versions")
    assert [row[0] for row in rows] == ["0", "1", "2", "3"] and rows[-1][-1] == "adapter/ (final)"
    assert rows[-1][2] == f"{summary['final']['accuracy']:.6g}"  # eval.accuracy, the first eval column
    assert [row for row in table_rows(html, "facts") if row[0] == "status"] == [["status", "completed"]]


def test_report_file_is_readable_by_others_and_leaves_no_temporary_file(run_dir, tmp_path):
    # Prepare
    out = tmp_path / "nested" / "dir" / "report.html"
    old_umask = os.umask(0o022)
    # Execute
    try:
        result = runner.invoke(app, ["report", str(run_dir), "-o", str(out)])
    finally:
        os.umask(old_umask)
    # Assert
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def test_an_existing_out_is_kept_unless_overwrite(run_dir, tmp_path):
    # Prepare
    out = tmp_path / "report.html"
    out.write_text("mine")
    # Execute
    refused = runner.invoke(app, ["report", str(run_dir), "--out", str(out)])
    kept = out.read_text()
    replaced = runner.invoke(app, ["report", str(run_dir), "--out", str(out), "--overwrite"])
    # Assert
    assert refused.exit_code == 2 and "already exists; choose another --out or pass --overwrite" in said(refused)
    assert kept == "mine"
    assert replaced.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>")


def test_out_that_is_a_directory_is_refused(run_dir, tmp_path):
    # Execute
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path), "--overwrite"])
    # Assert
    assert result.exit_code == 2 and "is a directory; name the HTML file to write" in said(result)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda text: text + "{not json\n", "metrics.jsonl line 4 is not valid JSON"),
    (lambda text: text.replace("\n", "\n\n", 1), "metrics.jsonl line 2 is empty"),
    (lambda text: "", "metrics.jsonl holds no lines"),
])
def test_a_damaged_metrics_file_is_refused_by_its_line_and_nothing_is_written(run_dir, tmp_path, damage, message):
    # Prepare
    run = copy_run(run_dir, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    metrics.write_text(damage(metrics.read_text()))
    before = sorted(p.name for p in run.iterdir())
    # Execute
    result = runner.invoke(app, ["report", str(run)])
    # Assert
    assert result.exit_code == 2 and message in said(result)
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_missing_run_dir_or_one_without_metrics_is_refused(tmp_path):
    # Prepare
    (tmp_path / "empty").mkdir()
    # Execute
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a.html")])
    empty = runner.invoke(app, ["report", str(tmp_path / "empty")])
    # Assert
    assert missing.exit_code == 2 and "nowhere does not exist" in said(missing)
    assert empty.exit_code == 2 and "holds neither metrics.jsonl (a `fedlm simulate` run) nor results.json" in said(empty)
    assert not (tmp_path / "a.html").exists() and not list((tmp_path / "empty").iterdir())


def test_a_damaged_config_or_summary_is_named(run_dir, tmp_path):
    # Prepare
    bad_config = copy_run(run_dir, tmp_path / "c")
    (bad_config / "config.toml").write_text("[privacy\n")
    bad_summary = copy_run(run_dir, tmp_path / "s")
    (bad_summary / "summary.json").write_text("[1,")
    # Execute
    config_result = runner.invoke(app, ["report", str(bad_config)])
    summary_result = runner.invoke(app, ["report", str(bad_summary)])
    # Assert
    assert config_result.exit_code == 2 and "config.toml is not valid TOML" in said(config_result)
    assert summary_result.exit_code == 2 and "summary.json is not valid JSON" in said(summary_result)


def test_an_experiment_output_gets_its_methods_table_and_charts(tmp_path):
    # Prepare
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    # Execute
    result = runner.invoke(app, ["report", str(tmp_path)])
    # Assert
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    assert [row[:3] for row in table_rows(html, "methods")] == [["base", "base model", "5.5"], ["fedavg", "FedAvg", "5.25"]]
    assert [(b["data-label"], b["data-value"]) for b in elements(html, "rect", "bar")] == [("base", "5.5"), ("fedavg", "5.25")]
    assert [(x, y) for _, x, y in points(html)] == [(0.0, 5.5), (1.0, 5.25)]


def test_a_damaged_results_file_is_refused(tmp_path):
    # Prepare
    (tmp_path / "results.json").write_text('["not", "an object"]')
    # Execute
    result = runner.invoke(app, ["report", str(tmp_path)])
    # Assert
    assert result.exit_code == 2 and "results.json holds a list, not a JSON object" in said(result)


def test_the_demo_configuration_on_the_tiny_model_gets_a_report_of_every_number(tmp_path):
    # Prepare: `make demo`'s run (the default config: the plays, held-out speakers) on the tiny model, two rounds
    run = tmp_path / "demo"
    simulated = runner.invoke(app, ["simulate", "--model", "tiny", "--rounds", "2", "--seq-len", "32", "--out", str(run),
                                    "-q", "--set", "eval.max_sequences=4"])
    assert simulated.exit_code == 0, simulated.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Execute: what `make demo` runs after the simulation
    result = runner.invoke(app, ["report", str(run), "--overwrite"])
    # Assert: every number of both rounds plotted at its round, held-out evaluation included
    assert result.exit_code == 0, result.output
    expected = {(path, float(line["round"]), float(value)) for line in lines for path, value in numbers(line) if path != ("round",)}
    plotted = points((run / "report.html").read_text())
    assert len(lines) == 2 and set(plotted) == expected and len(plotted) == len(expected)
    assert any(path == ("eval", "perplexity") for path, _, _ in plotted)
