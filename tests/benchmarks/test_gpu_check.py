"""The GPU check's answer on a machine without CUDA, and the local-training benchmark's instruction run, as scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(name: str, *flags: str, timeout: float) -> subprocess.CompletedProcess:
    """The script under this interpreter (the venv's) with CUDA hidden, so every machine is a CPU-only one."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *flags], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def test_gpu_check_without_cuda_says_so_and_exits_0() -> None:
    # Prepare: no CUDA device visible.
    # Execute
    done = run_script("gpu_check.py", timeout=60)
    # Assert: the one line, and success (nothing to check is not a failure).
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [done.stdout.strip()]
    assert "no CUDA device" in done.stdout and "nothing was run" in done.stdout


def test_gpu_check_requiring_a_gpu_fails_without_one() -> None:
    # Prepare: no CUDA device visible.
    # Execute
    done = run_script("gpu_check.py", "--require-gpu", timeout=60)
    # Assert
    assert done.returncode == 1
    assert "no CUDA device" in done.stdout


def test_local_training_instruction_reports_a_ratio_and_agreeing_losses() -> None:
    # Prepare: the tiny model, the fewest steps that still time something.
    flags = ("--model", "tiny", "--task", "instruction", "--json", "--repeats", "1", "--steps", "2", "--warmup", "1")
    # Execute
    done = run_script("local_training.py", *flags, timeout=120)
    # Assert: one kind measured, both sides counted the same labelled tokens, identical losses.
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (instruction,) = result["results"]
    assert instruction["task"] == "instruction"
    assert instruction["ratio"] > 0 and instruction["bare_tokens_per_s"] > 0
    assert instruction["ratio"] == instruction["fedlm_tokens_per_s"] / instruction["bare_tokens_per_s"]
    assert instruction["tokens_per_run"] > 0 and instruction["data"]["dropped"] < instruction["data"]["samples"]
    assert instruction["losses_match"] and result["losses_match"]
    assert instruction["first_step_loss_max_abs_diff"] == 0.0
    assert "instruction" in done.stderr and "agree" in done.stderr  # the summary table went to stderr
