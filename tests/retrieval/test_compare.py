"""The retrieval comparison on the tiny encoder over five plays: it runs end to end, budgets are equal, seeds repeat."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from fedlm.config import ConfigError, config_from_dict
from fedlm.data.plays import play_speeches
from fedlm.retrieval.compare import (
    METHODS, CompareSettings, MethodScore, gain_over_base, make_bench, pool_pairs, run_comparison, run_federated,
    run_seed, spread,
)

PLAYS, SPEECHES = 5, 12
SETTINGS = CompareSettings(rounds=2, clients_per_round=2, local_steps=1, batch_size=4, queries=8, held_out=2,
                           local_clients=2, seeds=(0, 1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny encoder's matrices are too small to share: two threads on busy cores run it many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """Five plays as a folder of <play>.jsonl clients, 12 speeches each; the tiny encoder at an lr that moves it."""
    root = tmp_path_factory.mktemp("plays")
    speeches = play_speeches()
    for play in sorted(speeches)[:PLAYS]:
        (root / f"{play}.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in speeches[play][:SPEECHES]))
    return config_from_dict({
        "model": {"name": "tiny-encoder"}, "task": {"kind": "retrieval"},
        "data": {"source": "folder", "path": str(root), "seq_len": 64},
        "client": {"lr": 1e-2}, "retrieval": {"query_len": 32, "candidates": 8},
    })


@pytest.fixture(scope="module")
def results(config):
    return run_comparison(config, SETTINGS)


@pytest.fixture(scope="module")
def bench(config):
    """Seed 0's loaded bench (the federated test trains its adapter; nothing else here depends on it)."""
    return make_bench(config, SETTINGS, 0)


def test_every_row_runs_for_every_seed_with_finite_figures_in_the_unit_interval(results):
    # Prepare / Execute: the module fixture ran the whole comparison (two seeds, the reranker row included).
    # Assert: every method of METHODS for every seed, each scored on all 2 x 8 held-out queries, in [0, 1].
    assert set(results["runs"]) == {"0", "1"}
    for rows in results["runs"].values():
        assert [r["name"] for r in rows] == list(METHODS)
        for r in rows:
            assert r["queries"] == SETTINGS.held_out * SETTINGS.queries
            for value in (r["recall"], r["mrr"]):
                assert math.isfinite(value) and 0.0 <= value <= 1.0
            assert r["mrr"] <= r["recall"]  # 1/rank <= 1 for every hit, 0 for every miss
            assert r["seconds"] > 0
    for summary in results["summary"].values():
        assert all(math.isfinite(summary[m][k]) for m in ("recall", "mrr") for k in ("mean", "std"))
    json.dumps(results)  # every number is JSON-ready


def test_trained_rows_see_the_same_number_of_pairs_counted_at_the_loss(results):
    # R x C x S x B = 2 x 2 x 1 x 4 = 16 pairs for the federated rows, the centralized one and each local-only client.
    assert SETTINGS.pairs == 16
    for rows in results["runs"].values():
        pairs = {r["name"]: r["pairs"] for r in rows}
        assert pairs == {"base": 0, "federated": 16, "federated_rerank": 16, "local_only": 16, "centralized": 16}
        local = next(r for r in rows if r["name"] == "local_only")
        assert [c["pairs"] for c in local["extra"]["clients"]] == [16, 16]


def test_held_out_plays_are_the_same_for_every_seed_and_score_all_their_documents(config, results, bench):
    # Five plays of 12 speeches, two held out by split_seed: their collections hold all 24 documents, train and test,
    # and the same queries for every run seed.
    counts = results["held_out"]
    assert counts["0"]["documents"] == counts["1"]["documents"] == 2 * SPEECHES
    assert counts["0"]["training_clients"] == PLAYS - SETTINGS.held_out
    first, second = bench, make_bench(config, SETTINGS, 1)
    assert first.held_out == second.held_out and not set(first.held_out) & set(first.clients)
    assert first.collections == second.collections


def test_equal_seeds_give_equal_results(config, results):
    # The fixture's seed 0 again (without the reranker row, to stay fast): the same figures to the last bit.
    again, _ = run_seed(config, dataclasses.replace(SETTINGS, rerank=False), 0)
    first = [r for r in results["runs"]["0"] if r["name"] != "federated_rerank"]
    assert [(r.name, r.recall, r.mrr, r.pairs) for r in again] == [(r["name"], r["recall"], r["mrr"], r["pairs"])
                                                                    for r in first]
    assert results["runs"]["1"][0]["extra"] == {"measured_once": True}  # base: untrained, the same collections


def test_the_federated_row_moves_the_encoder(bench):
    initial = bench.sim.adapter.initial_shared.copy()
    run_federated(bench, lambda _: None)
    assert np.abs(bench.federated_vector - initial).max() > 1e-4


def test_pooled_pairs_keep_every_client_pair_in_order(bench):
    parts = [bench.sim.train_blocks(c) for c in bench.clients[:2]]
    pooled = pool_pairs(parts)
    assert len(pooled) == len(parts[0]) + len(parts[1])
    assert pooled.queries[len(parts[0])] == parts[1].queries[0] and pooled.passages[-1] == parts[1].passages[-1]


def test_gain_over_base_is_the_mean_per_seed_difference_against_the_larger_spread():
    # base recall 0.30 / 0.40, federated 0.50 / 0.56: gains 0.20 and 0.16 -> mean 0.18, std 0.02828;
    # spreads: base std 0.0707, federated std 0.0424 -> the larger is 0.0707 < 0.18.
    def rows(base: float, fed: float) -> list[MethodScore]:
        return [MethodScore("base", base, base / 2, 10, 0, 1.0), MethodScore("federated", fed, fed / 2, 10, 32, 1.0)]

    gain = gain_over_base({0: rows(0.30, 0.50), 1: rows(0.40, 0.56)})["recall"]
    assert gain["mean"] == pytest.approx(0.18) and gain["std"] == pytest.approx(0.02 * 2 ** 0.5)
    assert gain["largest_spread"] == pytest.approx(0.1 / 2 ** 0.5) and gain["beats_spread"]
    assert spread([1.0]) == {"mean": 1.0, "std": 0.0}


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"batch_size": 0}, {"seeds": ()}, {"seeds": (1, 1)}])
def test_bad_settings_are_refused_naming_the_setting(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        CompareSettings(**bad)
