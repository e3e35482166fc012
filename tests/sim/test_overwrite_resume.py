"""Runs that cannot mix: --overwrite removes the previous run whole; --resume takes only its own run's checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from fedlm.config import RunConfig, apply_overrides
from fedlm.sim.events import SilentReporter
from fedlm.sim.rundir import read_metrics
from fedlm.sim.run import run_simulation

TINY = {"model": {"name": "tiny"}, "data": {"seq_len": 32}, "eval": {"clients": 2, "max_sequences": 4},
        "federation": {"clients_per_round": 2}, "client": {"local_steps": 1, "batch_size": 2}}


def config(seed: int, rounds: int) -> RunConfig:
    return apply_overrides(RunConfig(), {**TINY, "run": {"seed": seed}, "federation": {**TINY["federation"], "rounds": rounds}})


class StopInRound(SilentReporter):
    """Interrupts the run as Ctrl-C would, when round `round` starts."""

    def __init__(self, round: int) -> None:
        self.round = round

    def round_started(self, round: int, cohort_size: int) -> None:
        if round == self.round:
            raise KeyboardInterrupt


def test_overwrite_then_interrupt_then_resume_never_continues_the_previous_runs_checkpoint(tmp_path):
    # Prepare: the reproduction of the bug. Run A, seed 0, 2 rounds; run B, seed 7, 4 rounds, --overwrite, interrupted in round 1.
    out = tmp_path / "run"
    run_simulation(config(0, 2), out)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(config(7, 4), out, overwrite=True, reporter=StopInRound(1))
    # Execute / Assert: B left no checkpoint, A's went with the overwrite, so there is nothing to resume.
    assert not (out / "checkpoint").exists() and not (out / "checkpoint.old").exists()
    with pytest.raises(ValueError, match="has no checkpoint to resume from"):
        run_simulation(config(7, 4), out, resume=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["seed"] == 7 and summary["rounds_done"] == 0


def test_a_checkpoint_written_by_another_run_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    # Prepare: run B (seed 7) holds run A's (seed 0) checkpoint, as an overwrite by an older fedlm could leave it.
    run_simulation(config(0, 2), tmp_path / "a")
    run_simulation(config(7, 2), tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint")
    shutil.copytree(tmp_path / "a" / "checkpoint", tmp_path / "b" / "checkpoint")
    before = (tmp_path / "b" / "metrics.jsonl").read_bytes()
    monkeypatch.setattr("fedlm.sim.run.prepare", lambda *a: pytest.fail("the model loaded before the checkpoint was checked"))
    # Execute / Assert
    with pytest.raises(ValueError, match="written by a run with other settings or another seed"):
        run_simulation(config(7, 3), tmp_path / "b", resume=True)
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == before


def test_a_checkpoint_from_before_fingerprints_resumes_only_beside_its_own_metrics(tmp_path):
    # Prepare: a 2-round run whose checkpoint lacks the fingerprint, as older versions wrote it.
    out = tmp_path / "run"
    run_simulation(config(0, 2), out)
    state = out / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    del meta["run_fingerprint"]
    state.write_text(json.dumps(meta))
    # Execute: its metrics agree (rounds 1 and 2), so it resumes to round 3.
    summary = run_simulation(config(0, 3), out, resume=True)
    # Assert
    assert summary["status"] == "completed" and [r["round"] for r in read_metrics(out)] == [1, 2, 3]
    # And with the metrics of another, shorter history beside it, it is refused.
    state.write_text(json.dumps({**json.loads(state.read_text()), "run_fingerprint": ""}))
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="checkpoint holds 3 rounds but metrics.jsonl records 0"):
        run_simulation(config(0, 4), out, resume=True)


def test_the_fingerprint_ignores_settings_at_their_defaults_and_sees_a_changed_one():
    # Prepare: a run config; a setting given at its default stands for one a later fedlm adds (what resumes must see)
    from dataclasses import replace

    from fedlm.config import RunConfig, apply_overrides
    from fedlm.sim.rundir import run_fingerprint

    run = apply_overrides(RunConfig(), {"lora": {"r": 4}, "federation": {"rounds": 3}})
    # Assert: equal for what resume may change and for default-valued settings; different for a changed one
    assert run_fingerprint(run) == run_fingerprint(replace(run, federation=replace(run.federation, rounds=9)))
    assert run_fingerprint(run) != run_fingerprint(RunConfig())
    assert run_fingerprint(run) == run_fingerprint(apply_overrides(run, {"monitoring": {"enabled": True}}))  # its default
    assert run_fingerprint(run) != run_fingerprint(apply_overrides(run, {"compression": {"quantize_bits": 8}}))


def test_a_checkpoint_fingerprinted_the_old_way_resumes_beside_its_own_metrics(tmp_path):
    # Prepare: a 2-round run whose checkpoint carries an old-style fingerprint (a hash of every table, no kind)
    out = tmp_path / "run"
    run_simulation(config(0, 2), out)
    state = out / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    del meta["fingerprint_kind"]
    meta["run_fingerprint"] = "0123456789abcdef"  # no longer what this fedlm computes for the run
    state.write_text(json.dumps(meta))
    # Execute: its metrics agree, so it resumes to round 3
    summary = run_simulation(config(0, 3), out, resume=True)
    # Assert: resumed; the new checkpoint has today's kind of fingerprint
    assert summary["status"] == "completed" and [r["round"] for r in read_metrics(out)] == [1, 2, 3]
    assert json.loads(state.read_text())["fingerprint_kind"] == "changed-settings"
