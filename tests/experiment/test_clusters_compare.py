"""`fedlm experiment clusters`: one global vs a global per genre vs IFCA on the same cohorts, scored per genre."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app

runner = CliRunner()
METHODS = ["one_global", "by_genre", "ifca"]
GENRES = ["comedies", "histories"]  # --quick's


def run_quick(out, *sets: str):
    args = ["experiment", "clusters", "--quick", "--out", str(out), "--set", "model.threads=1"]
    for item in sets:
        args += ["--set", item]
    return runner.invoke(app, args)


@pytest.fixture(scope="module")
def two_genres(tmp_path_factory):
    out = tmp_path_factory.mktemp("clusters") / "out"
    result = run_quick(out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text()), out


def test_quick_run_writes_json_table_and_plot_with_finite_figures_per_genre_for_every_method(two_genres):
    # Execute (fixture)
    results, out = two_genres
    # Assert
    assert [m["name"] for m in results["methods"]] == METHODS and results["genres"] == GENRES
    for m in results["methods"]:
        for figures in [*m["by_genre"].values(), m["pooled"]]:
            assert math.isfinite(figures["loss"]) and math.isfinite(figures["perplexity"]) and figures["tokens"] > 0
    assert [m["globals"] for m in results["methods"]] == [1, 2, 2]
    # Equal training: the same cohorts train every method, 2 rounds x 4 clients x 1 step of 2 x 32 tokens at most.
    tokens = {m["training_tokens"] for m in results["methods"]}
    assert len(tokens) == 1 and 0 < tokens.pop() <= results["budget"]["tokens"] == 2 * 4 * 1 * 2 * 32
    assert sum(c["cohort"] for c in results["clients"].values()) == 2 * 4
    assert all(c["eval"] == 2 for c in results["clients"].values())
    table = (out / "results.md").read_text()
    assert "| comedies |" in table and "| **pooled** |" in table and "IFCA's globals by genre" in table
    assert (out / "per_genre.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_by_genre_trains_and_scores_every_client_under_its_own_genres_global(two_genres):
    results, _ = two_genres
    by_genre = next(m for m in results["methods"] if m["name"] == "by_genre")
    for genre in GENRES:
        assert set(by_genre["eval_assignment"][genre]) == {genre}
        assert set(by_genre["cohort_assignment"][genre]) == {genre}
    counts = {g: sum(by_genre["cohort_assignment"][g].values()) for g in GENRES}
    assert counts == {g: results["clients"][g]["cohort"] for g in GENRES}


def test_genre_and_pooled_figures_are_the_token_weighted_means_of_the_per_client_losses(two_genres):
    results, _ = two_genres
    for m in results["methods"]:
        clients = m["per_client"].values()
        for genre in GENRES:
            mine = [c for c in clients if c["genre"] == genre]
            expected = np.average([c["loss"] for c in mine], weights=[c["tokens"] for c in mine])
            assert m["by_genre"][genre]["loss"] == pytest.approx(expected, rel=1e-12)
            assert m["by_genre"][genre]["tokens"] == sum(c["tokens"] for c in mine)
        expected = np.average([c["loss"] for c in clients], weights=[c["tokens"] for c in clients])
        assert m["pooled"]["loss"] == pytest.approx(expected, rel=1e-12)
        assert m["pooled"]["perplexity"] == pytest.approx(math.exp(m["pooled"]["loss"]), rel=1e-12)


def test_with_one_genre_every_method_is_the_one_global_run_exactly(tmp_path):
    # Execute
    result = run_quick(tmp_path / "one", 'experiment.genres=["tragedies"]')
    # Assert: one global each, the same figures to the last bit
    assert result.exit_code == 0, result.output
    methods = json.loads((tmp_path / "one" / "results.json").read_text())["methods"]
    assert [m["globals"] for m in methods] == [1, 1, 1]
    first = methods[0]
    for m in methods[1:]:
        assert m["by_genre"] == first["by_genre"] and m["pooled"] == first["pooled"]
        assert m["per_client"] == first["per_client"] and m["training_tokens"] == first["training_tokens"]


@pytest.mark.parametrize("sets, message", [
    (['experiment.genres=["comedies", "sonnets"]'], "experiment.genres: unknown genre(s) ['sonnets']"),
    (["experiment.eval_per_genre=500"], "experiment.eval_per_genre = 500: genre 'comedies' has"),
    (["experiment.rounds=0"], "experiment.rounds: must be >= 1"),
    (["task.kind=retrieval"], "task.kind = 'retrieval' is an encoder kind"),
    (["data.source=folder", "data.path=."], "data.source = 'folder' has none"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, sets, message):
    # Execute
    result = run_quick(tmp_path / "c", *sets)
    # Assert
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "c").exists()
