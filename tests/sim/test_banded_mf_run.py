"""Banded MF-DP-FTRL in a simulated run: cyclic turns, one ledger entry, the noise state checkpointed and resumed."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from fedlm.config import ConfigError, RunConfig, apply_overrides
from fedlm.server.selection import cyclic_cohort, cyclic_groups
from fedlm.sim.checkpoint import load_checkpoint
from fedlm.sim.rundir import read_metrics
from fedlm.sim.run import run_simulation
from test_overwrite_resume import StopInRound

TINY = {"model": {"name": "tiny"}, "data": {"seq_len": 32, "min_lines": 700}, "eval": {"clients": 2, "max_sequences": 4},
        "client": {"local_steps": 1, "batch_size": 2}, "strategy": {"clip_norm": 0.5, "weighting": "uniform"}}
MF = {"federation": {"rounds": 4, "sampling": "cyclic", "groups": 2},
      "privacy": {"noise_multiplier": 1.5, "mechanism": "banded_mf", "accountant": "pld"}}


def mf_config(**changes) -> RunConfig:
    return apply_overrides(apply_overrides(RunConfig(), TINY | MF), changes)


def test_cyclic_groups_partition_the_population_take_turns_and_move_no_one_when_a_client_joins():
    population = tuple(f"c{i:02d}" for i in range(40))
    groups = cyclic_groups(population, 3, seed=0)
    assert sorted(itertools.chain(*groups)) == list(population)
    assert all(len(g) >= 5 for g in groups)  # a hash split: sizes vary around 40 / 3
    assert [cyclic_cohort(groups, r) for r in (1, 2, 3, 4)] == [groups[0], groups[1], groups[2], groups[0]]
    # add/remove-one neighbours: one more client changes no other client's group
    grown = cyclic_groups(population + ("new",), 3, seed=0)
    assert [tuple(c for c in g if c != "new") for g in grown] == list(groups)
    assert cyclic_groups(population, 3, seed=1) != groups


def test_more_groups_than_rounds_is_one_turn_each_at_most():
    from fedlm.privacy import banded
    from fedlm.privacy.plan import make_privacy_plan
    config = mf_config(federation={"rounds": 2, "groups": 10}, privacy={"bands": 2})
    plan = make_privacy_plan(config.privacy, config.federation, 100)
    c = np.array(plan.coefficients)
    assert plan.sensitivity == pytest.approx(float(np.sqrt(np.sum(c**2))))  # the fullest column: one turn
    assert plan.sensitivity == pytest.approx(banded.cyclic_sensitivity(c, 2, 2))
    assert plan.expected_cohort == 10.0


class Deterministic:
    """Stands in for the secure normal source: draw k of a run is the same in every run."""

    def __init__(self) -> None:
        self.draws = 0

    def __call__(self, size: int, std: float) -> np.ndarray:
        self.draws += 1
        return np.random.default_rng(self.draws).standard_normal(size).astype(np.float32) * std


def test_an_interrupted_run_resumes_the_same_noise_stream_and_pays_once(tmp_path, monkeypatch):
    # Prepare: the secure normals replaced by a seeded stream, so that two runs can be compared bit for bit
    source = Deterministic()
    monkeypatch.setattr("fedlm.privacy.correlated_noise.secure_gaussian", source)
    straight = run_simulation(mf_config(), tmp_path / "straight")
    straight_state, _ = load_checkpoint(tmp_path / "straight")
    source.draws = 0
    # Execute: the same run stopped as round 3 starts, then resumed
    with pytest.raises(KeyboardInterrupt):
        run_simulation(mf_config(), tmp_path / "resumed", reporter=StopInRound(3))
    stopped, _ = load_checkpoint(tmp_path / "resumed")
    resumed = run_simulation(mf_config(), tmp_path / "resumed", resume=True)
    resumed_state, _ = load_checkpoint(tmp_path / "resumed")
    # Assert: the checkpoint kept b - 1 = 1 noise vector, and the resumed run continued the same correlated noise
    assert stopped.rounds_done == 2 and len(stopped.noise_state) == 1
    np.testing.assert_array_equal(resumed_state.global_vector, straight_state.global_vector)
    assert straight["status"] == resumed["status"] == "completed"
    # one ledger entry, spent in round 1; epsilon is the same on every round's line
    assert [e.round for e in resumed_state.ledger.entries] == [1]
    epsilons = {r["epsilon"] for r in read_metrics(tmp_path / "resumed")}
    assert len(epsilons) == 1 and epsilons == {straight["epsilon"]}
    cohorts = [r["cohort"] for r in read_metrics(tmp_path / "straight")]
    assert cohorts[0] == cohorts[2] and cohorts[1] == cohorts[3] and sum(cohorts[:2]) == straight["population"]
    assert min(cohorts[:2]) >= 1
    # the noise state is server state: never in a metrics line or the summary
    text = (tmp_path / "straight" / "metrics.jsonl").read_text() + json.dumps(straight)
    assert "noise_state" not in text


def test_resume_may_not_change_the_rounds_the_factor_was_planned_for(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_simulation(mf_config(), tmp_path / "run", reporter=StopInRound(2))
    with pytest.raises(ValueError, match="cannot change federation.rounds .4 -> 6. under privacy.mechanism = 'banded_mf'"):
        run_simulation(mf_config(federation={"rounds": 6}), tmp_path / "run", resume=True)


@pytest.mark.parametrize(("changes", "message"), [
    ({"federation": {"sampling": "poisson", "sample_rate": 0.5, "groups": 1}}, "federation.sampling: must be 'cyclic'"),
    ({"privacy": {"mechanism": "gaussian"}}, "privacy.mechanism: must be 'banded_mf' with federation.sampling = 'cyclic'"),
    ({"privacy": {"bands": 3}}, "privacy.bands: must be <= federation.groups = 2"),
    ({"privacy": {"adaptive_clip": True}}, "privacy.adaptive_clip: cannot be combined with privacy.mechanism"),
    ({"federation": {"groups": 5, "rounds": 4}, "privacy": {"bands": 5}}, "privacy.bands: must be <= federation.rounds = 4"),
    ({"federation": {"sampling": "fixed"}}, "federation.groups: applies to federation.sampling = 'cyclic' only"),
    ({"privacy": {"noise_multiplier": 0.0}}, "'banded_mf' needs privacy.noise_multiplier > 0"),
    ({"privacy": {"noise_aware_lr": True}}, "privacy.noise_aware_lr: cannot be combined with privacy.mechanism"),
    ({"secagg": {"enabled": True}}, "secagg.enabled: cannot be combined with privacy.mechanism = 'banded_mf'"),
])
def test_what_banded_mf_cannot_account_is_refused(changes, message):
    with pytest.raises(ConfigError) as err:
        mf_config(**changes)
    assert message in str(err.value)
