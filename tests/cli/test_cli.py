"""The command line as a user meets it: help, config checks, a tiny run, clear errors."""

from __future__ import annotations

import json
import tomllib

from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import RunConfig, config_from_dict

runner = CliRunner()
TINY = ["--model", "tiny", "--rounds", "2", "--clients-per-round", "3", "--local-steps", "2",
        "--seq-len", "64", "--set", "eval.clients=2", "--set", "eval.max_sequences=4", "--quiet"]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "config", "models"):
        assert command in result.output


def test_config_defaults_is_valid_toml_of_the_defaults():
    result = runner.invoke(app, ["config", "defaults"])
    assert result.exit_code == 0
    assert config_from_dict(tomllib.loads(result.output)) == RunConfig()


def test_config_check_names_the_bad_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[client]\nlr = -1\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "client.lr" in result.output


def test_simulate_tiny_three_clients_two_rounds(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_done"] == 2 and summary["status"] == "completed"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert "perplexity" in result.output


def test_simulate_reads_a_config_file_and_flags_win(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[federation]\nrounds = 5\n[model]\nname = "tiny"\n')
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", "--config", str(config), *TINY, "--rounds", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    snapshot = tomllib.loads((out / "config.toml").read_text())
    assert snapshot["federation"]["rounds"] == 1 and snapshot["model"]["name"] == "tiny"


def test_bad_override_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", *TINY, "--set", "federation.sampling=sometimes", "--out", str(out)])
    assert result.exit_code == 2
    assert "federation.sampling" in result.output
    assert not out.exists()


def test_existing_run_is_not_overwritten_without_flag(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["simulate", *TINY, "--rounds", "1", "--out", str(out)]).exit_code == 0
    before = (out / "metrics.jsonl").read_bytes()
    result = runner.invoke(app, ["simulate", *TINY, "--rounds", "1", "--out", str(out)])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert (out / "metrics.jsonl").read_bytes() == before


def test_simulate_help_lists_every_setting():
    from fedlm.config import config_to_dict

    result = runner.invoke(app, ["simulate", "--help"], terminal_width=400)
    assert result.exit_code == 0
    for section, values in config_to_dict(RunConfig()).items():
        assert f"{section}:" in result.output
        for key in values:
            assert f"{key}=" in result.output, key


def test_the_command_line_loads_without_torch_or_the_service_stack():
    # `fedlm --help` and argument errors must be instant: heavy libraries load inside the commands
    import subprocess
    import sys

    heavy = ("torch", "transformers", "peft", "dp_accounting", "fastapi", "sqlalchemy", "ray")
    code = ("import sys, fedlm.cli.main; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def _every_command() -> list[list[str]]:
    """The argument lists that reach every command and group of the CLI, the root included."""
    import click
    import typer

    def walk(command: click.Command, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, [*path, name])
        return found

    return walk(typer.main.get_command(app), [])


def _help_texts(command_path: list[str]) -> list[str]:
    """The help, epilog and option help strings of the command at `command_path`."""
    import typer

    command = typer.main.get_command(app)
    for name in command_path:
        command = command.commands[name]
    return [command.help or "", command.epilog or ""] + [getattr(p, "help", None) or "" for p in command.params]


def test_help_prints_bracketed_toml_table_names_intact():
    import re

    # Prepare: every [table] named in any help text (the experiment command names its [experiment] table)
    cases = [(path, name) for path in _every_command() for text in _help_texts(path)
             for name in re.findall(r"\[[a-z_]+\]", text)]
    assert (["experiment", "compare"], "[experiment]") in cases
    for path, name in cases:
        # Execute
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        # Assert
        assert result.exit_code == 0 and name in result.output, (path, name)


def test_help_shows_flags_without_a_value_type():
    for path in _every_command():
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, path
        assert "<bool>" not in result.output, path
    overwrite = next(line for line in runner.invoke(app, ["simulate", "--help"]).output.splitlines() if "--overwrite" in line)
    assert overwrite.split()[0] == "--overwrite" and not overwrite.split()[1].startswith("<")  # no value to give


def test_config_check_lists_every_problem_of_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[client]\nlr = -1\n[lora]\nr = 0\n[federation]\nrounds = 0\n")
    result = runner.invoke(app, ["config", "check", str(path)], terminal_width=200)
    assert result.exit_code == 2
    assert "3 problems" in result.output
    for line in ("client.lr: must be > 0", "lora.r: must be >= 1", "federation.rounds: must be >= 1"):
        assert line in result.output


def test_simulate_refuses_a_bad_boolean_spelling_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", *TINY, "--set", "secagg.enabled=maybe", "--set", "client.lr=[/]",
                                 "--out", str(out)], terminal_width=200)
    assert result.exit_code == 2
    assert "secagg.enabled: must be true or false (or yes/no, 1/0), got 'maybe'" in result.output
    assert "client.lr: must be a number, got '[/]'" in result.output  # printed as text, not read as Rich markup
    assert not out.exists()
