"""`fedlm simulate` on the tiny model under central DP with 8-bit updates on the shared grid."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.updates import wire

runner = CliRunner()
TINY_DP = ["--model", "tiny", "--rounds", "2", "--clients-per-round", "3", "--local-steps", "2", "--seq-len", "64",
           "--set", "eval.clients=2", "--set", "eval.max_sequences=4", "--quiet",
           "--set", "privacy.noise_multiplier=0.5", "--set", "strategy.clip_norm=0.1", "--set", "strategy.weighting=uniform",
           "--set", "compression.quantize_bits=8"]


def test_central_dp_with_8_bit_updates_runs_and_uploads_a_quarter_of_dense(tmp_path):
    # Execute
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", *TINY_DP, "--out", str(out)])
    # Assert: completed, every update passed the server's clip check, epsilon reported, a quarter of the bytes
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["pipeline"].startswith("clip -> shared_quantize -> mean")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in records] == [3, 3]
    assert records[-1]["epsilon"] > 0
    dense = records[-1]["bytes_down_per_client"]
    size = (dense - wire.HEADER_BYTES) // 4
    assert records[-1]["bytes_up_per_client"] == wire.HEADER_BYTES + 4 + size  # one byte a value, one scale
    assert 0.24 < records[-1]["bytes_up_per_client"] / dense < 0.26


def test_distributed_noise_with_8_bits_is_refused_naming_both_settings(tmp_path):
    # Execute
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", *TINY_DP, "--set", "privacy.placement=distributed", "--out", str(out)],
                           terminal_width=400)
    # Assert: a clear refusal, before the run directory is made
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "compression.quantize_bits" in message and "privacy.placement" in message
    assert not out.exists()
