"""The comparison's budget: one number of training sequences, spent the same by every method, or refused."""

from __future__ import annotations

import pytest

from fedlm.config import ConfigError, RunConfig
from fedlm.experiment.report import gain_fraction
from fedlm.experiment.settings import ExperimentSettings, load_files, make_budget, make_settings, resolve


def test_default_budget_is_8_rounds_of_2_clients_4_steps_batch_4():
    # Execute
    budget = make_budget(ExperimentSettings(), RunConfig())
    # Assert: 8 x 2 x 4 x 4 = 256 sequences of 128 tokens; centralized 64 steps; 64 local clients 1 step of 4.
    assert budget.sequences == 256 and budget.tokens == 32_768
    assert budget.centralized_steps == 64
    assert (budget.local_steps, budget.local_batch_size) == (1, 4)
    # DP: 1 round x q = 1 x 64 clients x 4 steps x batch 1 is the same 256 sequences.
    s = ExperimentSettings()
    assert s.dp_rounds * s.dp_sample_rate * s.train_clients * s.dp_local_steps * s.dp_batch_size == 256


def test_local_only_share_smaller_than_a_batch_trains_with_a_smaller_batch():
    # Execute: 256 sequences over 128 clients is 2 each, below the batch of 4.
    budget = make_budget(make_settings({"train_clients": 128, "dp_batch_size": 1, "dp_local_steps": 2}), RunConfig())
    # Assert
    assert (budget.local_steps, budget.local_batch_size) == (1, 2)


@pytest.mark.parametrize("values, key", [
    ({"train_clients": 48}, "experiment.train_clients"),  # 256 / 48 is no whole share
    ({"dp_local_steps": 2}, "experiment.dp_rounds"),  # the DP row would train 128 sequences, not 256
])
def test_shapes_that_break_equal_compute_are_refused(values, key):
    with pytest.raises(ConfigError, match=key):
        make_budget(make_settings(values), RunConfig())


@pytest.mark.parametrize("values, message", [
    ({"rounds": 0}, "experiment.rounds: must be >= 1"),
    ({"dp_sample_rate": 1.5}, "experiment.dp_sample_rate"),
    ({"clients_per_round": 65}, "experiment.clients_per_round"),
    ({"adaptive_optimizer": "sgd"}, "experiment.adaptive_optimizer"),
    ({"rounds": "eight"}, "experiment.rounds: must be an integer"),
    ({"round": 8}, "experiment.round: unknown setting"),
])
def test_bad_settings_are_refused_with_their_key(values, message):
    with pytest.raises(ConfigError, match=message):
        make_settings(values)


def test_overrides_reach_both_the_run_config_and_the_experiment():
    # Execute
    config, settings = resolve(RunConfig(), {"run": {"seed": 3}, "experiment": {"rounds": 4}}, quick=False)
    quick_config, quick = resolve(RunConfig(), {"experiment": {"rounds": 4}}, quick=True)
    # Assert: the quick preset is applied first, the overrides on top.
    assert config.run.seed == 3 and settings.rounds == 4 and settings.train_clients == 64
    assert quick_config.model.name == "tiny" and quick.rounds == 4 and quick.train_clients == 4


def test_gain_fraction_worked_numbers():
    # base loss 4.0, centralized 3.0: a method at 3.25 recovers 75 % of the gain; one at 4.5 loses ground.
    assert gain_fraction(4.0, 3.25, 3.0) == pytest.approx(0.75)
    assert gain_fraction(4.0, 4.5, 3.0) == pytest.approx(-0.5)
    assert gain_fraction(4.0, 3.5, 4.0) is None  # centralized gained nothing: no fraction to report


def test_a_config_file_may_carry_an_experiment_table(tmp_path):
    # Prepare
    path = tmp_path / "run.toml"
    path.write_text('[run]\nseed = 5\n\n[experiment]\nrounds = 4\ndp_clip_norm = 3\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('experiment = 3\n')
    # Execute
    config, values = load_files(path)
    _, settings = resolve(config, {"experiment": values}, quick=False)
    # Assert: ints widen to floats like any other setting; a non-table is refused.
    assert config.run.seed == 5 and settings.rounds == 4 and settings.dp_clip_norm == 3.0
    with pytest.raises(ConfigError, match="experiment: must be a table"):
        load_files(bad)


def test_skip_leaves_out_known_rows_only_and_never_the_reference_rows():
    # Prepare
    from fedlm.experiment.compare import check_skip

    rows = ["base", "centralized", "local_only", "fedavg", "fedadam", "fedavg_dp", "fedavg_8bit"]
    # Execute / Assert
    check_skip(make_settings({"skip": ["local_only", "fedavg_8bit"]}), rows)
    with pytest.raises(ValueError, match="fedyogi"):
        check_skip(make_settings({"skip": ["fedyogi"]}), rows)
    with pytest.raises(ConfigError, match="experiment.skip"):
        make_settings({"skip": ["centralized"]})
