"""Tests of the run settings: defaults, TOML loading, validation messages and CLI overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedlm.config import (
    ClientSettings,
    ConfigError,
    LoraSettings,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


# --- defaults and round trips -----------------------------------------------------------


def test_defaults_round_trip_through_toml():
    # Execute
    back = config_from_dict(tomllib.loads(dump_config(RunConfig())))
    # Assert
    assert back == RunConfig()


def test_a_changed_config_round_trips_through_toml():
    # Prepare
    config = dataclasses.replace(
        RunConfig(),
        lora=LoraSettings(r=4, alpha=8, target_modules=("q_proj", "k_proj", "v_proj"), private=("*.lora_B*",)),
        client=ClientSettings(lr=0.5, optimizer="sgd", momentum=0.9),
    )
    # Execute
    back = config_from_dict(tomllib.loads(dump_config(config)))
    # Assert
    assert back == config
    assert back.lora.target_modules == ("q_proj", "k_proj", "v_proj")


def test_load_config_without_a_path_gives_the_defaults():
    assert load_config(None) == RunConfig()


def test_load_config_reads_a_partial_file_over_the_defaults(tmp_path: Path):
    # Prepare
    path = _write(tmp_path, '[model]\nname = "tiny"\n\n[federation]\nrounds = 3\n')
    # Execute
    config = load_config(path)
    # Assert
    assert config.model.name == "tiny" and config.federation.rounds == 3
    assert dataclasses.replace(config, model=RunConfig().model, federation=RunConfig().federation) == RunConfig()


def test_config_to_dict_writes_tuples_as_lists():
    assert config_to_dict(RunConfig())["lora"]["target_modules"] == ["q_proj", "v_proj"]


# --- what load_config refuses, naming the key --------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[bogus]\nx = 1\n", "bogus"),
        ("seed = 3\n", "seed"),  # a key outside any table
        ("[client]\nlrr = 0.1\n", "client.lrr"),
        ('[client]\nlr = "fast"\n', "client.lr"),
        ("[client]\nlr = 0\n", "client.lr"),
        ("[client]\nlr = -1e-3\n", "client.lr"),
        ("[client]\nlocal_steps = 2.0\n", "client.local_steps"),
        ("[client]\nlocal_steps = true\n", "client.local_steps"),
        ("[strategy]\nserver_lr = true\n", "strategy.server_lr"),
        ("[eval]\nheld_out_clients = 1\n", "eval.held_out_clients"),
        ('[lora]\ntarget_modules = "q_proj"\n', "lora.target_modules"),
        ('[lora]\ntarget_modules = ["q_proj", 3]\n', "lora.target_modules[1]"),
        ("[lora]\ntarget_modules = []\n", "lora.target_modules"),
        ("[lora]\ndropout = 1.0\n", "lora.dropout"),
        ("[data]\nseq_len = 4\n", "data.seq_len"),
        ('[data]\nsource = "folder"\n', "data.path"),
        ('[federation]\nsampling = "poisson"\n', "federation.sample_rate"),
        ("[run]\nseed = -1\n", "run.seed"),
        ("client = 3\n", "client"),  # a section that is not a table
    ],
    ids=[
        "unknown-table", "key-outside-table", "unknown-key", "string-for-float", "zero-lr", "negative-lr",
        "float-for-int", "bool-for-int", "bool-for-float", "int-for-bool", "string-for-list", "bad-list-item",
        "empty-list", "dropout-one", "seq-len-small", "folder-without-path", "poisson-without-rate",
        "negative-seed", "section-not-table",
    ],
)
def test_load_config_refuses_a_bad_file_naming_the_key(tmp_path: Path, text: str, key: str):
    # Prepare
    path = _write(tmp_path, text)
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(path)
    # Assert
    assert str(err.value).startswith(f"{key}: ")


def test_an_integer_is_accepted_for_a_float_setting(tmp_path: Path):
    # Execute
    config = load_config(_write(tmp_path, "[client]\nlr = 1\n"))
    # Assert
    assert config.client.lr == 1.0 and type(config.client.lr) is float


def test_load_config_refuses_a_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_load_config_refuses_invalid_toml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[client\nlr = \n"))


def test_settings_refuse_bad_values_when_built_directly():
    with pytest.raises(ConfigError, match="client.batch_size"):
        ClientSettings(batch_size=0)


# --- parse_override and apply_overrides --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b=3", ("a", "b", 3)),
        ("client.lr=1e-3", ("client", "lr", 0.001)),
        ("model.name=tiny", ("model", "name", "tiny")),
        ('model.name="tiny"', ("model", "name", "tiny")),
        ("data.path=/tmp/my data", ("data", "path", "/tmp/my data")),
        ("eval.held_out_clients=false", ("eval", "held_out_clients", False)),
        ('lora.target_modules=["q_proj", "k_proj"]', ("lora", "target_modules", ["q_proj", "k_proj"])),
        (" federation.rounds = 7 ", ("federation", "rounds", 7)),
        ("run.seed=1=2", ("run", "seed", "1=2")),
    ],
)
def test_parse_override_reads_the_value_as_toml_or_a_bare_string(text: str, expected: tuple):
    # Execute
    parsed = parse_override(text)
    # Assert
    assert parsed == expected
    assert type(parsed[2]) is type(expected[2])


@pytest.mark.parametrize(
    "text",
    [
        "x=1",
        "nodot",
        "client.lr",
        "client.=1",
        ".lr=1",
    ],
)
def test_parse_override_refuses_malformed_text(text: str):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(text)


def test_apply_overrides_changes_only_the_named_key():
    # Prepare
    config = RunConfig()
    # Execute
    changed = apply_overrides(config, {"client": {"lr": 0.5}})
    # Assert
    assert changed.client.lr == 0.5
    assert dataclasses.replace(changed, client=dataclasses.replace(changed.client, lr=config.client.lr)) == config
    assert changed.client.lr != config.client.lr and config == RunConfig()  # the input is untouched


def test_apply_overrides_from_parsed_text():
    # Prepare
    section, key, value = parse_override('lora.target_modules=["q_proj"]')
    # Execute
    changed = apply_overrides(RunConfig(), {section: {key: value}})
    # Assert
    assert changed.lora.target_modules == ("q_proj",)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"bogus": {"x": 1}}, "bogus"),
        ({"client": {"lrr": 1}}, "client.lrr"),
        ({"client": {"lr": "fast"}}, "client.lr"),
        ({"federation": {"rounds": 0}}, "federation.rounds"),
    ],
)
def test_apply_overrides_refuses_bad_overrides_naming_the_key(overrides: dict, key: str):
    # Prepare
    config = RunConfig()
    # Execute
    with pytest.raises(ConfigError) as err:
        apply_overrides(config, overrides)
    # Assert
    assert str(err.value).startswith(f"{key}: ")
    assert config == RunConfig()


def test_task_kind_is_checked_and_defaults_to_causal_lm():
    assert RunConfig().task.kind == "causal_lm"
    assert apply_overrides(RunConfig(), {"task": {"kind": "instruction"}}).task.kind == "instruction"
    with pytest.raises(ConfigError, match=r"task\.kind: must be one of \('causal_lm', 'instruction', 'retrieval', 'rerank', 'classify'\)"):
        apply_overrides(RunConfig(), {"task": {"kind": "chat"}})


def test_instruction_settings_are_checked():
    with pytest.raises(ConfigError, match=r"data\.overlong"):
        apply_overrides(RunConfig(), {"data": {"overlong": "wrap"}})
    with pytest.raises(ConfigError, match=r"eval\.choice_options: must be >= 2"):
        apply_overrides(RunConfig(), {"eval": {"choice_options": 1}})
    with pytest.raises(ConfigError, match=r"eval\.choice_questions: must be >= 1"):
        apply_overrides(RunConfig(), {"eval": {"choice_questions": 0}})


def test_every_task_kind_has_a_client_work_module_and_no_other():
    from fedlm.config import TASK_KINDS
    from fedlm.work import KINDS

    assert tuple(KINDS) == TASK_KINDS
    assert all(KINDS[kind].kind == kind for kind in KINDS)


def test_a_multiple_choice_setting_that_is_neither_a_mode_nor_a_jsonl_path_is_refused():
    assert apply_overrides(RunConfig(), {"eval": {"multiple_choice": "my/questions.jsonl"}}).eval.multiple_choice
    with pytest.raises(ConfigError, match=r"eval\.multiple_choice: must be 'auto', 'off' or the path of a \.jsonl file"):
        apply_overrides(RunConfig(), {"eval": {"multiple_choice": "Auto"}})
