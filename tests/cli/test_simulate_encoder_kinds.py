"""`fedlm simulate` on the encoder kinds prints each kind's own figures: recall@10 and MRR@10, or accuracy."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedlm.cli.main import app

runner = CliRunner()
COMMON = ["--model", "tiny-encoder", "--rounds", "1", "--clients-per-round", "2", "--seq-len", "48",
          "--set", "eval.clients=2", "--set", "client.local_steps=1", "--set", "client.batch_size=4"]


def test_a_retrieval_run_reports_recall_and_mrr_not_perplexity(tmp_path):
    # Prepare: four sites of two-sentence documents
    for site in range(4):
        (tmp_path / "docs" / f"site{site}").mkdir(parents=True)
        (tmp_path / "docs" / f"site{site}" / "d.txt").write_text(
            "\n\n".join(f"Site {site} note {i}. It has two sentences." for i in range(8)), encoding="utf-8")
    # Execute
    result = runner.invoke(app, ["simulate", "--data", str(tmp_path / "docs"), "--out", str(tmp_path / "run"),
                                 "--set", "task.kind=retrieval", *COMMON])
    # Assert: the table's columns and summary.json's figures agree
    assert result.exit_code == 0, result.output
    assert "recall@10" in result.output and "MRR@10" in result.output and "perplexity" not in result.output
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    assert 0 <= final["recall_at_10"] <= 1 and final["queries"] > 0
    assert f"{final['recall_at_10']:.3f}" in result.output


def test_a_classify_run_reports_accuracy_and_refuses_svd(tmp_path):
    # Prepare: four sites of labelled intents
    (tmp_path / "intents").mkdir()
    for site in range(4):
        rows = [json.dumps({"text": f"please {w} my order {i}", "label": w}) for i in range(6) for w in ("cancel", "track")]
        (tmp_path / "intents" / f"site{site}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["simulate", "--data", str(tmp_path / "intents"), "--set", "task.kind=classify", *COMMON]
    # Execute
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "svd"), "--set", "lora.aggregation=svd"])
    # Assert
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "perplexity" not in result.output
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    assert f"{final['accuracy']:.3f}" in result.output
    assert refused.exit_code != 0 and "lora.aggregation" in refused.output and not (tmp_path / "svd").exists()


def test_fedlm_experiment_compare_points_an_encoder_kind_to_its_own_comparison(tmp_path):
    result = runner.invoke(app, ["experiment", "compare", "--quick", "--out", str(tmp_path / "cmp"),
                                 "--set", "task.kind=retrieval"])
    assert result.exit_code == 2 and "benchmarks/rag_compare.py" in result.output
    assert not (tmp_path / "cmp").exists()
