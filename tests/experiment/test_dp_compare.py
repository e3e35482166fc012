"""`fedlm experiment dp --quick`: every row accounted and scored; reused round-1 updates equal training afresh."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import ConfigError, RunConfig
from fedlm.experiment.dp_compare import (
    RoundOneUpdates, adapter_config, design_overrides, row_config, training_clients,
)
from fedlm.experiment.dp_settings import QUICK_DP, make_dp_settings, resolve_dp
from fedlm.experiment.methods import federated_simulation, reset_adapter
from fedlm.privacy.design import gaussian_dp_delta
from fedlm.privacy.plan import default_delta
from fedlm.sim.cohort import SerialExecutor
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    result = CliRunner().invoke(app, ["experiment", "dp", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text())


def test_every_row_meets_its_epsilon_and_the_outputs_are_written(quick_run):
    out, results = quick_run
    rows = results["rows"]
    # 2 adapters x 3 designs x (no DP + epsilon 8), and the noise-aware full row for LoRA
    assert len(rows) == 13
    for row in rows:
        if row["target_epsilon"] is not None:
            assert row["epsilon"] <= row["target_epsilon"] + 1e-9 and row["epsilon"] > 0.99 * row["target_epsilon"]
            assert row["predicted_snr"] > 0
        base, central = results["base"]["loss"], results["centralized"]["loss"]
        assert row["fraction_of_centralized_gain"] == pytest.approx((base - row["loss"]) / (base - central))
    full = [r for r in rows if r["design"] == "full"]
    assert {r["client_updates"] for r in full} == {results["adapters"]["fedit"]["clients"]}
    # one training pass per adapter: only the first row of each adapter trains the first round
    assert [r["trained_now"] for r in rows if r["design"] == "full"] == [24, 0, 0, 24, 0]
    mf = [r for r in rows if r["design"] == "banded_mf"]
    # banded MF: group 1 reused in round 1, group 2 trained afresh in round 2 (hash groups: sizes vary around 12)
    assert {r["rounds"] for r in mf} == {2} and {r["client_updates"] for r in mf} == {24}
    assert len({r["trained_now"] for r in mf}) == 1 and 0 < mf[0]["trained_now"] < 24
    assert (out / "results.md").read_text().count("\n| ") == 2 + 13
    assert (out / "gain_vs_predicted_snr.png").stat().st_size > 10_000


class SeededNormals:
    def __init__(self) -> None:
        self.draws = 0

    def __call__(self, size: int, std: float) -> np.ndarray:
        self.draws += 1
        return np.random.default_rng(self.draws).standard_normal(size).astype(np.float32) * std


def test_a_row_from_reused_round_one_updates_equals_the_row_trained_afresh(monkeypatch):
    # Prepare: the quick run's LoRA, banded MF at epsilon 8 (round 1 reused, round 2 trained); seeded noise draws
    config, settings = resolve_dp(RunConfig(), {}, quick=True)
    sim = prepare(adapter_config(config, settings, "fedit"))
    clients = training_clients(sim, settings)
    row = row_config(sim.config, settings, "banded_mf", 8.0, len(clients), clip=0.2)
    updates = RoundOneUpdates(sim)
    warm = federated_simulation(sim, row_config(sim.config, settings, "full", None, len(clients), clip=0.2), clients)
    simulate(warm, executor=SerialExecutor(updates.trainer(warm), sim.adapter.shared_spec.size))  # fills round 1
    runs = []
    for executor in (lambda s: SerialExecutor(updates.trainer(s), sim.adapter.shared_spec.size), lambda s: None):
        monkeypatch.setattr("fedlm.privacy.correlated_noise.secure_gaussian", SeededNormals())
        cell = federated_simulation(sim, row, clients)
        reset_adapter(sim.adapter)
        runs.append(simulate(cell, executor=executor(cell)).state.global_vector)
    # Assert: reused and afresh agree bit for bit; the reused run took group 1's round-1 updates from the pass and
    # trained only group 2 (round 2)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert 0 < updates.reused < 24 and updates.reused + (updates.trained - 24) == 24


def test_full_participation_noise_is_the_closed_form_gaussian_dp_noise():
    # z = 1 / mu, with mu the GDP parameter of (8, 1/N^1.1); N = 722 speakers
    overrides = design_overrides(make_dp_settings({}), "full", 8.0, 722)
    z = overrides["privacy"]["noise_multiplier"]
    assert gaussian_dp_delta(1 / z, 8.0) == pytest.approx(default_delta(722), rel=1e-4)
    assert overrides["federation"] == {"rounds": 1, "sampling": "poisson", "sample_rate": 1.0}


@pytest.mark.parametrize(("values", "message"), [
    ({"adapters": ["lora"]}, "dp.adapters: must name some of"),
    ({"mf_bands": 3, "mf_rounds": 2}, "dp.mf_bands: must be <= mf_groups and <= mf_rounds"),
    ({"poisson_rate": 1.0}, "dp.poisson_rate: must be in (0, 1)"),
    ({"epsilons": [0.0]}, "dp.epsilons: must be numbers > 0"),
    ({"nope": 1}, "nope"),
])
def test_bad_settings_are_refused_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_dp_settings(values)


def test_the_quick_preset_is_valid():
    assert make_dp_settings(QUICK_DP).train_clients == 24
