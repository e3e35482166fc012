"""Cross-silo runs: a handful of sites, each training and each scored on its own held-out split.

The issue's first-hour failure: five sites' folders refused with the defaults (`5 clients ...
too few for eval.clients = 16`), and with eval.clients = 1 one site silently left out of
training. Now eval.mode = "auto" picks per-site evaluation for a few sites and says so.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import RunConfig, apply_overrides
from fedlm.data.types import ClientData, FederatedDataset
from fedlm.eval.metrics import EvalResult
from fedlm.eval.sites import pooled, site_summary
from fedlm.sim.setup import describe_split, pick_eval_mode, split_population

WORDS = ["alpha beta gamma delta", "ward bed chart dose", "loan rate bank fund", "river boat fish net", "code test build ship"]


def write_sites(root, sites=5, paragraphs=30):
    for i in range(sites):
        site = root / f"site{i}"
        site.mkdir(parents=True)
        text = "\n\n".join(f"{WORDS[i % len(WORDS)]} note {j} of site {i}. " * 3 for j in range(paragraphs))
        (site / "notes.txt").write_text(text, encoding="utf-8")


def federation(count: int, *, without_test: int = 0) -> FederatedDataset:
    clients = tuple(ClientData(f"c{i:02d}", ("a", "b"), () if i < without_test else ("c",)) for i in range(count))
    return FederatedDataset("toy", clients)


def test_auto_mode_picks_per_site_below_twice_eval_clients():
    config = RunConfig()  # eval.clients = 16
    assert pick_eval_mode(federation(5), config)[0] == "per_site"
    assert pick_eval_mode(federation(31), config)[0] == "per_site"
    assert pick_eval_mode(federation(32), config)[0] == "held_out"
    forced = apply_overrides(config, {"eval": {"mode": "held_out", "clients": 2}})
    assert pick_eval_mode(federation(5), forced) == ("held_out", "eval.mode = 'held_out'")


def test_per_site_trains_every_client_and_says_which_are_not_scored():
    dataset = federation(5, without_test=1)
    population, scored = split_population(dataset, RunConfig(), "per_site")
    assert population == tuple(f"c{i:02d}" for i in range(5)) and scored == population[1:]
    line = describe_split("per_site", "why", dataset, population, scored)
    assert "all 5 clients train" in line and "1 with no test samples are not scored" in line


def test_held_out_mode_says_how_many_clients_do_not_train():
    dataset = federation(40)
    config = apply_overrides(RunConfig(), {"eval": {"mode": "held_out", "clients": 3}})
    population, scored = split_population(dataset, config, "held_out")
    assert len(population) == 37 and len(scored) == 3 and not set(population) & set(scored)
    assert "kept out of training; 37 of 40 clients train" in describe_split("held_out", "why", dataset, population, scored)


def test_too_few_clients_for_held_out_names_the_way_out():
    config = apply_overrides(RunConfig(), {"eval": {"mode": "held_out"}})
    with pytest.raises(ValueError, match="eval.mode = 'per_site'"):
        split_population(federation(5), config, "held_out")


def test_site_summary_mean_and_worst_by_hand():
    sites = {"a": EvalResult(loss_sum=20.0, tokens=10), "b": EvalResult(loss_sum=30.0, tokens=10),
             "c": EvalResult(loss_sum=10.0, tokens=20)}
    summary = site_summary(sites)
    # losses 2.0, 3.0, 0.5: every site counts once, whatever its token count
    assert summary["mean_loss"] == pytest.approx((2.0 + 3.0 + 0.5) / 3)
    assert summary["mean_perplexity"] == pytest.approx((math.exp(2.0) + math.exp(3.0) + math.exp(0.5)) / 3)
    assert (summary["worst_site"], summary["worst_loss"]) == ("b", 3.0)
    assert pooled(sites).loss == pytest.approx(60.0 / 40)  # the pooled figure weighs tokens
    assert site_summary({})["worst_site"] is None


def test_five_sites_run_with_default_settings_and_report_per_site_metrics(tmp_path, caplog):
    # Prepare: five sites' folders; nothing but the model and the data is set.
    write_sites(tmp_path / "sites")
    (tmp_path / "sites" / "site0" / "figures.json").write_text("{}")  # not a format fedlm reads: skipped, and said
    out = tmp_path / "run"
    # Execute
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(app, ["simulate", "--model", "tiny", "--data", str(tmp_path / "sites"),
                                          "--out", str(out), "--quiet"])
    # Assert
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["eval_mode"] == "per_site"
    assert summary["population"] == 5 and summary["eval_clients"] == 5
    assert any("all 5 clients train" in r.getMessage() for r in caplog.records)
    assert any("clients_per_round = 4 of the 5 sites; set it to 5" in r.getMessage() for r in caplog.records)
    assert any("skipped" in r.getMessage() and "figures.json" in r.getMessage() for r in caplog.records)
    assert summary["data_files"]["clients"] == 5 and summary["data_files"]["skipped"] == 1
    assert summary["data_files"]["refused"] == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == RunConfig().federation.rounds
    for line in lines:
        sites = line["sites"]
        assert sorted(sites["by_site"]) == [f"site{i}" for i in range(5)]
        losses = {name: row["loss"] for name, row in sites["by_site"].items()}
        assert sites["mean_loss"] == pytest.approx(sum(losses.values()) / 5)
        assert sites["worst_site"] == max(losses, key=losses.get)
        tokens = [row["tokens"] for row in sites["by_site"].values()]
        assert line["eval"]["tokens"] == sum(tokens)  # the pooled figure is every site's tokens together
        pooled_loss = sum(row["loss"] * row["tokens"] for row in sites["by_site"].values()) / sum(tokens)
        assert line["eval"]["loss"] == pytest.approx(pooled_loss, rel=1e-6)
    assert summary["final_sites"]["by_site"] == lines[-1]["sites"]["by_site"]


def test_a_binary_file_stops_the_run_before_the_model_loads(tmp_path, monkeypatch):
    from fedlm.data.report import DataRefused
    from fedlm.sim import setup

    write_sites(tmp_path / "sites", sites=3)
    (tmp_path / "sites" / "site1" / "scan.txt").write_bytes(b"%PDF\x00\x01\x02" * 100)
    (tmp_path / "sites" / "site2" / "latin.txt").write_bytes("caf\xe9 au lait".encode("cp1252"))
    monkeypatch.setattr(setup, "assemble", lambda *a, **k: pytest.fail("the model must not load"))
    config = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "data": {"source": "folder", "path": str(tmp_path / "sites")}})
    with pytest.raises(DataRefused) as refused:
        setup.prepare(config)
    assert len(refused.value.problems) == 2  # both files, at once
    text = str(refused.value)
    assert "scan.txt" in text and "latin.txt" in text and "lait" not in text  # named, never quoted
