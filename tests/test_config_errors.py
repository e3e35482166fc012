"""Every problem of a config reported at once, and the settings only the model can check (context, LoRA targets)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from fedlm.config import (
    ClientSettings,
    ConfigError,
    LoraSettings,
    RunConfig,
    apply_overrides,
    load_config,
    parse_override,
)
from fedlm.settings_checks import collect_problems, require


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


# --- one error for the whole file ----------------------------------------------------------------


def test_three_errors_in_three_tables_come_back_as_one_error_naming_all_three(tmp_path: Path):
    # Prepare: one range error each in [client], [lora] and [federation]
    path = _write(tmp_path, "[client]\nlr = -1\n\n[lora]\nr = 0\n\n[federation]\nrounds = 0\n")
    # Execute
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    # Assert
    assert caught.value.problems == ["client.lr: must be > 0", "lora.r: must be >= 1", "federation.rounds: must be >= 1"]
    assert str(caught.value) == ("3 problems in the settings:\n  client.lr: must be > 0\n  lora.r: must be >= 1\n"
                                 "  federation.rounds: must be >= 1")


def test_unknown_tables_and_keys_wrong_types_range_and_cross_table_checks_are_all_collected(tmp_path: Path):
    # Prepare: an unknown table; in [client] an unknown key, a wrong type and a range error; DP on with clip_norm 0
    path = _write(tmp_path, "[bogus]\nx = 1\n\n[client]\nlrr = 0.1\nbatch_size = \"four\"\nlocal_steps = 0\n\n"
                            "[privacy]\nnoise_multiplier = 1.0\n")
    # Execute
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    # Assert
    keys = [problem.split(": ", 1)[0] for problem in caught.value.problems]
    assert keys == ["bogus", "client.lrr", "client.batch_size", "client.local_steps", "strategy.clip_norm",
                    "strategy.weighting"]
    assert "client.batch_size: must be an integer, got 'four'" in caught.value.problems


def test_a_single_problem_keeps_its_one_line_message(tmp_path: Path):
    # Execute
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, "[client]\nlr = 0\n"))
    # Assert
    assert str(caught.value) == "client.lr: must be > 0"
    assert caught.value.problems == ["client.lr: must be > 0"]


def test_two_failed_checks_on_one_table_are_both_reported(tmp_path: Path):
    # Execute: lora.r = 0 and lora.dropout = 1.0 both fail LoraSettings.__post_init__
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, "[lora]\nr = 0\ndropout = 1.0\n"))
    # Assert
    assert caught.value.problems == ["lora.r: must be >= 1", "lora.dropout: must be in [0, 1)"]


def test_the_file_and_the_overrides_are_checked_together(tmp_path: Path):
    # Prepare
    path = _write(tmp_path, "[client]\nlr = -1\n")
    # Execute
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"federation": {"rounds": 0}, "nope": {"x": 1}})
    # Assert
    assert caught.value.problems[0] == "client.lr: must be > 0"
    assert caught.value.problems[1:] == ["federation.rounds: must be >= 1",
                                         "nope: unknown table; known: " + ", ".join(f.name for f in dataclasses.fields(RunConfig))]


def test_an_override_replaces_the_files_bad_value_before_it_is_checked(tmp_path: Path):
    # Execute
    config = load_config(_write(tmp_path, "[client]\nlr = -1\n"), {"client": {"lr": 0.5}})
    # Assert
    assert config.client.lr == 0.5


def test_apply_overrides_collects_every_problem_and_leaves_the_config_unchanged():
    # Prepare
    config = RunConfig()
    # Execute
    with pytest.raises(ConfigError) as caught:
        apply_overrides(config, {"client": {"lr": 0, "batch_size": 0}, "eval": {"clients": 0}})
    # Assert
    assert caught.value.problems == ["client.batch_size: must be >= 1", "client.lr: must be > 0", "eval.clients: must be >= 1"]
    assert config == RunConfig()


def test_outside_a_collector_a_settings_table_raises_at_its_first_failed_check():
    with pytest.raises(ConfigError) as caught:
        ClientSettings(batch_size=0, lr=0)
    assert caught.value.problems == ["client.batch_size: must be >= 1"]


def test_a_nested_collector_adds_to_the_outer_one_which_raises_once_and_then_stops_collecting():
    # Execute
    with pytest.raises(ConfigError) as caught:
        with collect_problems():
            require(False, "a.b", "first")
            with collect_problems():
                require(False, "c.d", "second")
                require(False, "a.b", "first")  # the same problem twice is listed once
            require(False, "e.f", "third")
    # Assert
    assert caught.value.problems == ["a.b: first", "c.d: second", "e.f: third"]
    with pytest.raises(ConfigError, match="^g.h: raised at once$"):
        require(False, "g.h", "raised at once")


def test_a_config_error_pickles_with_its_problems():
    # the processes executor sends errors between processes
    err = ConfigError("a.b: one", "c.d: two")
    back = pickle.loads(pickle.dumps(err))
    assert back.problems == err.problems and str(back) == str(err)


def test_the_service_file_collects_the_problems_of_a_table():
    from fedlm.service.settings import settings_from_dict

    with pytest.raises(ConfigError) as caught:
        settings_from_dict({"server": {"port": 0, "tick_seconds": 0, "colour": "red"}})
    keys = [problem.split(": ", 1)[0] for problem in caught.value.problems]
    assert keys == ["server.colour", "server.port", "server.tick_seconds"]


# --- boolean settings on the command line ----------------------------------------------------------


@pytest.mark.parametrize(("spelling", "expected"), [
    ("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("no", False),
    ("YES", True), ("False", False),
])
def test_set_accepts_the_usual_spellings_of_a_boolean(spelling: str, expected: bool):
    # Prepare: the text as `--set` reads it (1 and 0 arrive as integers, yes and no as strings)
    section, key, value = parse_override(f"eval.held_out_clients={spelling}")
    # Execute
    config = load_config(None, {section: {key: value}})
    via_apply = apply_overrides(RunConfig(), {section: {key: value}})
    # Assert
    assert config.eval.held_out_clients is expected and via_apply.eval.held_out_clients is expected


@pytest.mark.parametrize("spelling", ["maybe", "2", "1.0", "ja"])
def test_set_refuses_any_other_spelling_of_a_boolean_naming_the_key(spelling: str):
    section, key, value = parse_override(f"secagg.enabled={spelling}")
    with pytest.raises(ConfigError) as caught:
        load_config(None, {section: {key: value}})
    assert caught.value.problems == [f"secagg.enabled: must be true or false (or yes/no, 1/0), got {value!r}"]


def test_a_toml_file_still_says_true_or_false(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^eval\.held_out_clients: must be true or false, got 'yes'$"):
        load_config(_write(tmp_path, '[eval]\nheld_out_clients = "yes"\n'))


def test_the_simulate_command_reads_set_spellings_of_a_boolean():
    from fedlm.cli.simulate import collect_overrides, resolve_config

    config = resolve_config(None, collect_overrides({}, None, ["eval.held_out_clients=no", "compression.quantize_bits=8",
                                                               "compression.rotate=yes"]))
    assert config.eval.held_out_clients is False and config.compression.rotate is True


# --- what only the model can check ------------------------------------------------------------------


def _tiny(**sections) -> RunConfig:
    config = dataclasses.replace(RunConfig(), model=dataclasses.replace(RunConfig().model, name="tiny", device="cpu"))
    return dataclasses.replace(config, **sections)


def test_a_seq_len_past_the_models_context_is_refused_naming_the_model_and_its_limit():
    from fedlm.assembly import assemble_model

    # Prepare: the tiny model's config says max_position_embeddings = 512
    config = _tiny(data=dataclasses.replace(RunConfig().data, seq_len=513))
    # Execute
    with pytest.raises(ConfigError) as caught:
        assemble_model(config)
    # Assert
    assert str(caught.value) == ("data.seq_len: 513 tokens is past the context of model 'tiny', 512 tokens "
                                 "(max_position_embeddings); set data.seq_len <= 512")


def test_a_seq_len_at_the_models_context_is_accepted():
    from fedlm.assembly import assemble_model

    _, base, adapter = assemble_model(_tiny(data=dataclasses.replace(RunConfig().data, seq_len=512)))
    assert base.model.config.max_position_embeddings == 512 and adapter.shared_spec.size > 0


TINY_LAYERS = "down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"


@pytest.mark.parametrize(("targets", "unmatched"), [
    (("no_such_layer",), "'no_such_layer' matches"),
    (("q_proj", "v_prj"), "'v_prj' matches"),  # a typo beside a valid name: PEFT alone would adapt q_proj only
    (("q_prj", "v_prj"), "'q_prj', 'v_prj' match"),
    (("mlp",), "'mlp' matches"),  # a module, but not a layer LoRA can wrap
])
def test_target_modules_that_match_no_layer_are_refused_naming_the_layers_there_are(targets, unmatched):
    from fedlm.models.base import load_base_model
    from fedlm.models.lora import attach_lora

    # Prepare
    base = load_base_model("tiny")
    # Execute
    with pytest.raises(ConfigError) as caught:
        attach_lora(base, LoraSettings(target_modules=targets), seed=0)
    # Assert: the message names the setting, the bad entries, the model and its layers; the model is untouched
    assert str(caught.value) == (f"lora.target_modules: {unmatched} no layer of model 'tiny'; "
                                 f"its layers LoRA can adapt: {TINY_LAYERS}")
    assert not any("lora" in name for name, _ in base.model.named_modules())


@pytest.mark.parametrize("targets", [("self_attn.q_proj", "v_proj"), ("model.layers.0.mlp.up_proj",), ("o_proj",)])
def test_target_modules_match_by_name_or_dotted_suffix_as_peft_does(targets):
    from fedlm.models.base import load_base_model
    from fedlm.models.lora import attach_lora

    adapter = attach_lora(load_base_model("tiny"), LoraSettings(target_modules=targets), seed=0)
    assert adapter.shared_spec.size > 0
