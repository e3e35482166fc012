"""Clustered federated learning (sim/clustered.py, server/cluster_settings.py): K globals, IFCA or declared keys."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedlm.config import ConfigError, apply_overrides, config_from_dict
from fedlm.data.plays import play_genres
from fedlm.server.cluster_settings import ClusterSettings
from fedlm.server.rounds import initial_state
from fedlm.sim.cluster_assignment import (
    are_identical, cluster_keys, drawn_assignment, probe_batches, probe_losses, rebalance, segment_of,
)
from fedlm.sim.clustered import simulate_clustered
from fedlm.sim.engine import simulate
from fedlm.sim.run import run_simulation
from fedlm.sim.setup import prepare

LETTERS = ("letters-0", "letters-1", "letters-2", "letters-3")
DIGITS = ("digits-0", "digits-1", "digits-2", "digits-3")


def write_planted(root: Path) -> Path:
    """8 clients of two clearly separated distributions: lowercase letters only, or digits only."""
    for name in LETTERS + DIGITS:
        alphabet = "abcdefghij" if name.startswith("letters") else "0123456789"
        rng = np.random.default_rng(sum(map(ord, name)))
        paragraphs = ["".join(rng.choice(list(alphabet), 120)) for _ in range(20)]
        (root / name).mkdir(parents=True)
        (root / name / "text.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    return root


def planted_config(root: Path, **sections):
    base = config_from_dict({
        "model": {"name": "tiny", "threads": 1},  # a shared CPU: more torch threads only spin
        "data": {"source": "folder", "path": str(root), "seq_len": 32},
        "redaction": {"enabled": "off"},  # digit runs would read as card and phone numbers
        "federation": {"rounds": 2, "clients_per_round": 4},
        "client": {"local_steps": 2, "batch_size": 2, "lr": 5e-3},
        "eval": {"mode": "per_site", "max_sequences": 4},
        "monitoring": {"enabled": False},
    })
    return apply_overrides(base, sections)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return write_planted(tmp_path_factory.mktemp("planted"))


# --- one global: the clustered engine is today's engine -------------------------------------------------------


def test_one_cluster_equals_the_one_global_engine_bit_for_bit(planted):
    # Prepare: the same config, each engine on its own freshly prepared simulation
    config = planted_config(planted)
    # Execute
    reference = simulate(prepare(config))
    clustered = simulate_clustered(prepare(config))
    # Assert: the global, and every figure of every round's line
    assert np.array_equal(clustered.state.global_vector, reference.state.global_vector)
    assert clustered.state.version == reference.state.version == 2
    assert list(clustered.states) == ["0"]
    for mine, theirs in zip(clustered.records, reference.records, strict=True):
        assert mine["eval"] == theirs["eval"] and mine["train_loss"] == theirs["train_loss"]
        assert {k: v for k, v in mine.items() if k not in ("seconds", "clusters", "assigned_by")} == \
               {k: v for k, v in theirs.items() if k != "seconds"}
        assert mine["clusters"]["0"]["clients"] == theirs["cohort"] == 4
    assert clustered.final_eval == reference.final_eval and clustered.final_sites == reference.final_sites


# --- IFCA -------------------------------------------------------------------------------------------------------


def test_ifca_puts_two_planted_distributions_on_two_globals(planted):
    # Prepare: K = 2, every client every round
    # (IFCA can collapse: when one global is better for everyone after round 1, the other never trains again;
    # at this lr, 7 of seeds 0-7 separate within 5 rounds. This seed separates from round 2 with a margin of
    # 0.12 or more in every client's probe loss.)
    config = planted_config(planted, run={"seed": 3}, clusters={"count": 2},
                            federation={"rounds": 3, "clients_per_round": 8},
                            client={"local_steps": 4, "batch_size": 2, "lr": 0.1})
    # Execute
    result = simulate_clustered(prepare(config))
    # Assert: round 1 is dealt by the seeded draw (the globals are identical), then each group ends on its own global
    assert [r["assigned_by"] for r in result.records] == ["draw", "loss", "loss"]
    last = result.assignments[-1]
    letters, digits = {last[c] for c in LETTERS}, {last[c] for c in DIGITS}
    assert len(letters) == 1 and len(digits) == 1 and letters != digits
    chosen = result.eval_assignment  # every site is scored under its own group's global
    assert {chosen[c] for c in LETTERS} == letters and {chosen[c] for c in DIGITS} == digits
    line = result.records[-1]["clusters"]
    assert sorted(v["clients"] for v in line.values()) == [4, 4]
    assert all(v["probe_loss"] is not None and v["eval_clients"] == 4 for v in line.values())
    assert result.states["0"].version == result.states["1"].version == 3  # both trained every round
    assert result.records[-1]["eval"]["tokens"] == sum(v["eval"]["tokens"] for v in line.values())  # pooled = the sum
    assert "letters-" not in json.dumps([r["clusters"] for r in result.records])  # counts and losses, no client id


def test_the_first_draw_deals_the_cohort_evenly_and_repeats_with_the_seed():
    clients = tuple(f"c{i}" for i in range(7))
    drawn = drawn_assignment(clients, ("0", "1", "2"), seed=3, round=1, purpose="cohort")
    counts = sorted(list(drawn.values()).count(k) for k in ("0", "1", "2"))
    assert counts == [2, 2, 3]
    assert drawn == drawn_assignment(clients, ("0", "1", "2"), seed=3, round=1, purpose="cohort")
    assert drawn != drawn_assignment(clients, ("0", "1", "2"), seed=3, round=2, purpose="cohort")


def test_probe_batches_are_the_clients_first_blocks_in_order(planted):
    sim = prepare(planted_config(planted))
    blocks = sim.train_blocks("letters-0")
    batches = probe_batches(blocks, batch_size=2, count=2)
    assert [len(b) for b in batches] == [2, 2]
    assert np.array_equal(batches[1].input_ids, blocks.input_ids[2:4])
    assert [len(b) for b in probe_batches(blocks.take(np.arange(3)), batch_size=2, count=5)] == [2, 1]
    state = initial_state(sim.adapter.initial_shared)
    assert are_identical({"0": state, "1": state})


def test_a_probe_already_made_under_the_same_version_is_not_made_again(planted):
    # Prepare: two globals that differ, and a loss that counts its calls
    sim = prepare(planted_config(planted))
    moved = sim.adapter.initial_shared + np.float32(0.01)
    states = {"0": initial_state(sim.adapter.initial_shared), "1": initial_state(moved)}
    batches = {c: probe_batches(sim.train_blocks(c), 2, 2) for c in ("letters-0", "digits-0")}
    calls, loss = [], sim.work.loss
    sim.work = SimpleNamespace(loss=lambda model, batch: calls.append(1) or loss(model, batch))
    memo = {}
    # Execute
    first = probe_losses(sim, states, batches, {}, memo)
    again = probe_losses(sim, states, batches, {}, memo)
    # Assert: 2 clients x 2 globals x 2 batches, once; the same numbers from the memo
    assert len(calls) == 8 and np.array_equal(first, again) and first[0, 0] != first[0, 1]


# --- declared keys -----------------------------------------------------------------------------------------------


def test_genre_key_maps_hamlet_to_the_tragedies():
    genres = play_genres()
    assert segment_of("hamlet/hamlet", "genre", genres) == "tragedies"
    assert segment_of("hamlet", "genre", genres) == "tragedies"  # the retrieval kinds' one client a play
    assert segment_of("a-midsummer-night-s-dream/bottom", "genre", genres) == "comedies"
    with pytest.raises(ValueError, match="no genre for play 'no-such-play'"):
        segment_of("no-such-play/someone", "genre", genres)


def test_prefix_key_reads_the_id_before_its_first_slash_or_dash():
    assert segment_of("letters-1", "prefix") == "letters"
    assert segment_of("ward/b-2", "prefix") == "ward"
    with pytest.raises(ValueError, match="clusters.key = 'prefix'"):
        segment_of("-1", "prefix")


def test_key_assignment_trains_each_segment_on_its_own_global(planted):
    config = planted_config(planted, clusters={"count": 2, "assign": "key", "key": "prefix"},
                            federation={"rounds": 1, "clients_per_round": 8})
    result = simulate_clustered(prepare(config))
    assert list(result.states) == ["digits", "letters"]
    assert result.assignments[0] == {c: c.split("-")[0] for c in LETTERS + DIGITS}
    line = result.records[0]
    assert line["assigned_by"] == "key" and line["clusters"]["letters"]["clients"] == 4
    assert line["clusters"]["digits"]["eval_clients"] == 4 and line["cohort"] == 8


def test_a_count_that_does_not_match_the_segments_is_refused_listing_them(planted, tmp_path):
    config = planted_config(planted, clusters={"count": 3, "assign": "key", "key": "prefix"})
    with pytest.raises(ConfigError, match=r"clusters.count: is 3, .* 2 segments \(digits, letters\)"):
        cluster_keys(prepare(config))
    with pytest.raises(ConfigError, match="set clusters.count = 2"):
        run_simulation(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


# --- settings and refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "problem"), [
    ({"count": 0}, "clusters.count: must be an integer in [1, 256]"),
    ({"count": 2, "assign": "kmeans"}, "clusters.assign: must be one of"),
    ({"count": 2, "assign": "key", "key": "region"}, "clusters.key: must be one of"),
    ({"count": 2, "probe_batches": 0}, "clusters.probe_batches: must be >= 1"),
    ({"assign": "key"}, "clusters.assign: applies with clusters.count > 1 only"),
    ({"count": 2, "key": "prefix"}, "clusters.key: applies to clusters.assign = 'key' only"),
])
def test_bad_cluster_settings_name_the_key(table, problem):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"clusters": table})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(("sections", "named"), [
    ({"privacy": {"noise_multiplier": 1.0}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"},
      "eval": {"mode": "held_out", "clients": 2}},
     ("privacy.noise_multiplier", "parallel composition")),
    ({"secagg": {"enabled": True}, "strategy": {"clip_norm": 1.0, "weighting": "uniform"}}, ("secagg.enabled",)),
    ({"policy": {"kind": "fedbuff"}}, ("policy.kind", "'fedbuff'")),
    ({"simulation": {"executor": "processes"}}, ("simulation.executor", "'processes'")),
    ({"clusters": {"count": 2, "assign": "key", "key": "genre"}}, ("clusters.key", "data.source = 'folder'")),
])
def test_what_clusters_cannot_run_is_refused_before_anything_runs(planted, tmp_path, sections, named):
    # Prepare
    out = tmp_path / "run"
    # Execute: the config itself is refused, so nothing can run
    with pytest.raises(ConfigError) as err:
        run_simulation(planted_config(planted, **{"clusters": {"count": 2}, **sections}), out)
    # Assert: both settings named, and no run directory made
    assert "clusters.count = 2" in str(err.value) or "clusters.key" in str(err.value)
    assert all(name in str(err.value) for name in named)
    assert not out.exists()


def test_resume_is_refused_for_clusters(planted, tmp_path):
    with pytest.raises(ValueError, match="--resume is not supported for clusters.count = 2"):
        run_simulation(planted_config(planted, clusters={"count": 2}), tmp_path / "run", resume=True)
    assert not (tmp_path / "run").exists()


def test_defaults_leave_one_global():
    assert ClusterSettings().count == 1 and not ClusterSettings().enabled


# --- the run directory ---------------------------------------------------------------------------------------------


def test_a_clustered_run_writes_one_adapter_per_global(planted, tmp_path):
    # Prepare
    config = planted_config(planted, clusters={"count": 2}, federation={"rounds": 2, "clients_per_round": 4})
    # Execute
    summary = run_simulation(config, tmp_path / "run")
    # Assert
    run = tmp_path / "run"
    assert summary["status"] == "completed"
    assert summary["clusters"]["adapters"] == {"0": "adapters/0", "1": "adapters/1"}
    for key in ("0", "1"):
        assert (run / "adapters" / key / "adapter_model.safetensors").is_file()
        assert (run / "adapters" / key / "adapter_config.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == \
           (run / "adapters" / "0" / "adapter_model.safetensors").read_bytes()
    assert not (run / "checkpoint").exists()  # one checkpoint would hold one global: none is written
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [sum(c["clients"] for c in line["clusters"].values()) for line in lines] == [4, 4]
    assert set(summary["clusters"]["versions"]) == {"0", "1"}


# --- the guard against IFCA's collapse ------------------------------------------------------------------------


def test_rebalance_moves_the_least_regret_clients_to_an_empty_global():
    # Prepare: four clients all chose global 0; their regrets under global 1 are 0.5, 0.1, 0.3, 0.1
    losses = np.array([[1.0, 1.5], [2.0, 2.1], [1.0, 1.3], [3.0, 3.1]])
    chosen = np.zeros(4, np.int64)
    # Execute
    one, moved_one = rebalance(chosen, losses, 1)
    two, moved_two = rebalance(chosen, losses, 2)
    big, _ = rebalance(chosen, losses, 5)  # more than 4 // 2 each: as many as there are, 2
    # Assert: ties go to the first in cohort order; the input is not changed
    assert one.tolist() == [0, 1, 0, 0] and moved_one == 1
    assert two.tolist() == [0, 1, 0, 1] and moved_two == 2
    assert big.tolist() == two.tolist() and chosen.tolist() == [0, 0, 0, 0]


def test_a_seed_on_which_ifca_collapses_separates_with_the_guard(planted):
    # Prepare: seed 2 puts every client on one global from round 2 on when nothing stops it
    sections = dict(run={"seed": 2}, federation={"rounds": 5, "clients_per_round": 8},
                    client={"local_steps": 4, "batch_size": 2, "lr": 0.1})
    # Execute
    guarded = simulate_clustered(prepare(planted_config(planted, clusters={"count": 2}, **sections)))
    unguarded = simulate_clustered(prepare(planted_config(planted, clusters={"count": 2, "min_clients": 0}, **sections)))
    # Assert
    sizes = [sorted(v["clients"] for v in r["clusters"].values()) for r in unguarded.records]
    assert sizes[1:] == [[0, 8]] * 4  # collapsed
    last = guarded.assignments[-1]
    letters, digits = {last[c] for c in LETTERS}, {last[c] for c in DIGITS}
    assert len(letters) == 1 and len(digits) == 1 and letters != digits
    assert guarded.records[1]["rebalanced"] == 1 and guarded.records[-1]["rebalanced"] == 0
