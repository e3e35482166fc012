"""Instruction tuning end to end: FedAvg on one client is centralized training; the CLI on each JSONL format."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import RunConfig
from fedlm.data.blocks import concat_blocks
from fedlm.experiment.compare import choose_training_clients, fedavg_config, plain_config
from fedlm.experiment.methods import federated_simulation, train_centralized
from fedlm.experiment.settings import make_settings, resolve
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare

runner = CliRunner()
INSTRUCTION = {"task": {"kind": "instruction"}, "data": {"seq_len": 320, "min_lines": 300}, "client": {"lr": 1e-2}}


def test_one_round_of_instruction_fedavg_on_one_client_equals_centralized_instruction_tuning():
    # Prepare: the tiny model on the Shakespeare dialogue; the federation is one client holding all the training data.
    config, _ = resolve(RunConfig(), {**INSTRUCTION, "eval": {"multiple_choice": "off"}}, quick=True)
    settings = make_settings({"train_clients": 1, "rounds": 1, "clients_per_round": 1, "local_steps": 5})
    sim = prepare(plain_config(config))
    (client,) = choose_training_clients(sim, 1, config.run.seed)
    fed = fedavg_config(config, settings)
    union = concat_blocks([sim.train_blocks(client)], config.data.seq_len)
    assert len(union) > config.client.batch_size
    # Execute: FedAvg through the engine, then centralized training with the same steps, batches, seed and loss.
    federated = simulate(federated_simulation(sim, fed, (client,))).state.global_vector
    steps = dataclasses.replace(config.client, local_steps=settings.local_steps)
    result = train_centralized(sim.adapter, union, steps, seed=config.run.seed, name=client, loss_fn=sim.work.loss)
    centralized = sim.adapter.read_shared(np.empty_like(federated))
    # Assert: the same adapter to 1e-6, one that moved far beyond that.
    assert result.steps == 5
    np.testing.assert_allclose(federated, centralized, rtol=0, atol=1e-6)
    assert np.abs(centralized - sim.adapter.initial_shared).max() > 1e-2


COLOURS = ["Blue.", "Green.", "Red.", "Amber.", "Violet."]


def chat(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Colour {i}?"},
                         {"role": "assistant", "content": COLOURS[i % 5]}]}


def trl(i: int) -> dict:
    return {"prompt": f"Colour {i}?", "completion": COLOURS[i % 5]}


def alpaca(i: int) -> dict:
    return {"instruction": f"Colour {i}?", "input": "", "output": COLOURS[i % 5]}


def write_federation(root, record, clients=6, per_client=5):
    """`clients` JSONL files of `per_client` records each, record(i) giving line i's (replies differ by line)."""
    root.mkdir()
    for c in range(clients):
        lines = [json.dumps(record(i)) for i in range(per_client)]
        (root / f"site{c}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("name,record", [("chat", chat), ("trl", trl), ("alpaca", alpaca)])
def test_simulate_runs_instruction_tuning_on_a_jsonl_folder_in_each_format(tmp_path, name, record):
    # Prepare
    data = write_federation(tmp_path / name, record)
    out = tmp_path / "run"
    # Execute
    result = runner.invoke(app, ["simulate", "--model", "tiny", "--data", str(data), "--out", str(out), "-q",
                                 "--rounds", "2", "--clients-per-round", "2", "--seq-len", "96",
                                 "--set", "task.kind=instruction", "--set", "eval.clients=2", "--set", "eval.choice_options=2"])
    # Assert: the run completed, trained on responses, and reported the response loss and two-option questions.
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"] == "instruction"
    assert summary["final"]["loss"] < summary["base"]["loss"]
    assert summary["training_data"] == {"samples": 4 * 4, "sequences": 16, "truncated": 0, "dropped": 0}  # 4 sites x 4 train
    assert summary["final"]["choice_questions"] == summary["eval_data"]["questions"] == 2  # 2 sites x 1 test line
    assert summary["final"]["choice_chance"] == 0.5


def test_a_record_in_no_known_format_stops_the_run_naming_file_and_line(tmp_path, monkeypatch):
    # Prepare: site0's third line fits none of the three shapes.
    data = write_federation(tmp_path / "data", trl)
    lines = (data / "site0.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"question": "Name a colour.", "answer": "Blue."})
    (data / "site0.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr("fedlm.sim.setup.assemble", lambda *a, **k: pytest.fail("the model loaded before the data was read"))
    # Execute
    result = runner.invoke(app, ["simulate", "--model", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                                 "-q", "--set", "task.kind=instruction", "--set", "eval.clients=2"])
    # Assert: refused before any model loads, and nothing written.
    assert result.exit_code == 2
    assert "site0.jsonl, line 3" in " ".join(result.output.split())  # rich wraps long lines at spaces
    assert not (tmp_path / "run").exists()


def test_quick_comparison_under_instruction_reports_response_perplexity_and_multiple_choice_with_chance(tmp_path):
    # Execute
    result = runner.invoke(app, ["experiment", "compare", "--quick", "--out", str(tmp_path / "cmp"),
                                 "--set", "task.kind=instruction",
                                 "--set", 'experiment.skip=["fedadam", "fedavg_dp", "fedavg_8bit"]'])
    # Assert: the four rows, each with multiple-choice counts on both slices, and the table says what chance is.
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert results["task"] == "instruction"
    assert [m["name"] for m in results["methods"]] == ["base", "centralized", "local_only", "fedavg"]
    questions = results["slices"]["held_out"]["questions"]
    assert questions > 0 and results["slices"]["own"]["questions"] > 0
    for m in results["methods"]:
        held_out = m["held_out"]
        assert held_out["choice_questions"] == questions and held_out["choice_chance"] == 0.25
        assert 0 <= held_out["choice_accuracy"] <= 1
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "| held-out MC acc |" in table and "chance level 0.250" in table
    assert "loss and perplexity on response tokens only" in table
    assert "held-out MC acc" in result.output  # the command prints the table too


def test_simulate_runs_on_the_embedded_shakespeare_dialogue(tmp_path):
    # Prepare: the roles with at least 400 verse lines only, to keep the test short.
    out = tmp_path / "run"
    # Execute
    result = runner.invoke(app, ["simulate", "--model", "tiny", "--out", str(out), "-q", "--rounds", "1", "--seq-len", "320",
                                 "--set", "task.kind=instruction", "--set", "data.min_lines=400",
                                 "--set", "eval.clients=2", "--set", "eval.choice_questions=6"])
    # Assert: the dialogue data set, six reply-of-four questions, the printed table with the chance level.
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "shakespeare-dialogue" and summary["rounds_done"] == 1
    assert summary["final"]["choice_questions"] == 6 and summary["final"]["choice_chance"] == 0.25
    assert summary["training_data"]["samples"] > 100 and summary["training_data"]["dropped"] == 0
    assert "multiple choice" in result.output and "chance" in result.output


@pytest.mark.parametrize("kind,mode", [("causal_lm", "held_out"), ("instruction", "held_out"), ("causal_lm", "per_site")])
def test_a_users_own_multiple_choice_file_is_asked_under_either_kind(tmp_path, kind, mode):
    # Prepare: three questions; the data is plain text for causal_lm, conversations for instruction.
    questions = tmp_path / "mc.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in [
        {"question": "Which is a colour?", "choices": ["Blue", "Table"], "answer": 0},
        {"question": "Which is a number?", "choices": ["Seven", "Green", "Chair"], "answer": "A"},
        {"question": "Which is an animal?", "choices": ["Tree", "Horse"], "answer": 1},
    ]) + "\n")
    if kind == "instruction":
        data = write_federation(tmp_path / "data", trl)
    else:
        data = tmp_path / "data"
        for c in range(6):
            (data / f"site{c}").mkdir(parents=True)
            (data / f"site{c}" / "a.txt").write_text("\n\n".join(f"Line {i} of site {c}." for i in range(5)))
    out = tmp_path / "run"
    # Execute
    result = runner.invoke(app, ["simulate", "--model", "tiny", "--data", str(data), "--out", str(out), "-q",
                                 "--rounds", "1", "--clients-per-round", "2", "--seq-len", "96", "--set", f"task.kind={kind}",
                                 "--set", "eval.clients=2", "--set", f"eval.multiple_choice={questions}",
                                 "--set", f"eval.mode={mode}"])
    # Assert: every question asked each evaluation, once (per site too: the file's questions belong to no site),
    # chance (1/2 + 1/3 + 1/2) / 3.
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for row in (summary["base"], summary["final"]):
        assert row["choice_questions"] == 3
        assert row["choice_chance"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
        assert row["choice_accuracy"] in (0, 1 / 3, 2 / 3, 1)
