"""`fedlm rag index` and `fedlm rag query` as a client meets them, on the tiny encoder: results, refusals, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.retrieval.encoder import load_encoder

runner = CliRunner()
PARAGRAPHS = ["The king is dead; long live the king.", "A horse, a horse, my kingdom for a horse!",
              "Out, damned spot! Out, I say!", "Now is the winter of our discontent.",
              "To be, or not to be, that is the question."]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def save_lora(model, directory: Path, task_type: str) -> Path:
    """A LoRA adapter with non-zero B (it changes outputs), saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type=task_type, r=2, target_modules=["query", "value"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Path:
    """A client folder of five paragraphs, indexed once with the tiny encoder into client/.fedlm-index."""
    folder = tmp_path_factory.mktemp("rag") / "client"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "lines.txt").write_text("\n\n".join(PARAGRAPHS), encoding="utf-8")
    result = runner.invoke(app, ["rag", "index", str(folder), "--encoder", "tiny-encoder", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    return folder


def query(index_dir: Path, text: str, *args: str):
    return runner.invoke(app, ["rag", "query", str(index_dir), text, *args])


def test_index_writes_a_hidden_index_and_prints_no_passage(client: Path):
    manifest = json.loads((client / ".fedlm-index" / "manifest.json").read_text())
    assert manifest["count"] == 5 and manifest["encoder"]["name"] == "tiny-encoder"
    rerun = runner.invoke(app, ["rag", "index", str(client), "--encoder", "tiny-encoder", "--overwrite"])
    assert rerun.exit_code == 0, rerun.output
    assert "indexed 5 documents (dim 32, encoder tiny-encoder)" in rerun.output  # the hidden index was not read back
    assert not any(p.split()[0] in rerun.output for p in PARAGRAPHS)


def test_query_finds_a_passage_first_and_prints_rank_score_and_text(client: Path):
    # Execute
    result = query(client / ".fedlm-index", PARAGRAPHS[2], "--k", "3")
    as_json = query(client / ".fedlm-index", PARAGRAPHS[2], "--k", "3", "--json")
    # Assert: the passage itself, at cosine 1, then two others in decreasing cosine
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"  1  1.0000  {PARAGRAPHS[2]}"
    hits = json.loads(as_json.output)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["id"] == 2
    assert hits[0]["cosine"] >= hits[1]["cosine"] >= hits[2]["cosine"]


def test_a_query_past_the_encoder_limit_is_refused(client: Path):
    before = snapshot(client / ".fedlm-index")
    result = query(client / ".fedlm-index", "x" * 200)
    # 200 bytes + [CLS] + [SEP] on the byte-level tiny encoder, whose limit is 128
    assert result.exit_code == 2
    assert "the query is 202 tokens long, past the limit of 128 tokens of the encoder 'tiny-encoder'" in result.output
    assert snapshot(client / ".fedlm-index") == before


def test_a_missing_or_foreign_index_is_refused(tmp_path: Path):
    result = query(tmp_path / "nowhere", "a horse")
    assert result.exit_code == 2 and "no index at" in result.output and "does not exist" in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.faiss").write_bytes(b"\0" * 16)
    result = query(tmp_path / "other", "a horse")
    assert result.exit_code == 2 and "is not a fedlm index: it has no manifest.json" in result.output


def test_rebuild_without_overwrite_and_an_empty_folder_change_nothing(client: Path, tmp_path: Path):
    before = snapshot(client / ".fedlm-index")
    result = runner.invoke(app, ["rag", "index", str(client), "--encoder", "tiny-encoder"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert snapshot(client / ".fedlm-index") == before
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["rag", "index", str(tmp_path / "empty"), "--encoder", "tiny-encoder"])
    assert result.exit_code == 2 and "nothing was indexed" in result.output
    assert list((tmp_path / "empty").iterdir()) == []


def test_an_index_inside_the_documents_must_be_hidden(client: Path):
    result = runner.invoke(app, ["rag", "index", str(client), "--encoder", "tiny-encoder", "--out", str(client / "idx")])
    assert result.exit_code == 2 and "use a hidden name" in result.output
    assert not (client / "idx").exists()


def test_a_query_with_another_adapter_than_the_index_is_refused(client: Path, tmp_path: Path):

    adapter = save_lora(load_encoder("tiny-encoder").model, tmp_path / "adapter", "FEATURE_EXTRACTION")
    result = query(client / ".fedlm-index", "a horse", "--adapter", str(adapter))
    assert result.exit_code == 2
    assert "built with no adapter, but the query would use adapter" in result.output
    # Built with the adapter, it answers with it (and only with it)
    out = tmp_path / "adapted-index"
    built = runner.invoke(app, ["rag", "index", str(client), "--encoder", "tiny-encoder", "--adapter", str(adapter),
                                "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert query(out, PARAGRAPHS[0], "--adapter", str(adapter), "--k", "1").exit_code == 0
    assert "but the query would use no adapter" in query(out, PARAGRAPHS[0]).output


def test_the_reranker_reorders_the_candidates_by_its_scores(client: Path, tmp_path: Path):
    from fedlm.retrieval.encoder import load_encoder, max_length
    from fedlm.retrieval.rerank import load_reranker, rerank_scores

    # Prepare: a reranker adapter (a one-output head over the tiny encoder)
    reranker = save_lora(load_encoder("tiny-encoder", num_labels=1).model, tmp_path / "reranker", "SEQ_CLS")
    cosine_top = json.loads(query(client / ".fedlm-index", "a horse", "--k", "4", "--json").output)
    # Execute
    result = query(client / ".fedlm-index", "a horse", "--k", "3", "--candidates", "4", "--reranker", str(reranker),
                   "--json")
    # Assert: the cosine top 4, ordered by the cross-encoder's own scores, cut to 3
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    loaded = load_reranker(reranker)
    passages = [h["text"] for h in cosine_top]
    scores = rerank_scores(loaded.model, loaded.tokenizer, "a horse", passages,
                           length=max_length(loaded.tokenizer, loaded.model))
    expected = sorted(zip(scores.tolist(), passages, strict=True), key=lambda pair: -pair[0])[:3]
    assert [h["text"] for h in hits] == [p for _, p in expected]
    assert [h["rerank"] for h in hits] == pytest.approx([s for s, _ in expected], abs=1e-5)


def test_a_reranker_adapter_is_no_query_encoder_and_a_query_encoder_is_no_reranker(client: Path, tmp_path: Path):
    # Prepare: a SEQ_CLS (reranker) adapter and a FEATURE_EXTRACTION (query encoder) adapter
    reranker = save_lora(load_encoder("tiny-encoder", num_labels=1).model, tmp_path / "reranker", "SEQ_CLS")
    encoder = save_lora(load_encoder("tiny-encoder").model, tmp_path / "encoder", "FEATURE_EXTRACTION")
    before = snapshot(client / ".fedlm-index")
    # Execute
    indexed = runner.invoke(app, ["rag", "index", str(client), "--encoder", "tiny-encoder", "--adapter", str(reranker),
                                  "--overwrite"])
    reranked = query(client / ".fedlm-index", "a horse", "--reranker", str(encoder))
    # Assert: both refused with the reason, and the index is untouched
    assert indexed.exit_code == 2 and "no query encoder" in indexed.output
    assert reranked.exit_code == 2 and "SEQ_CLS" in reranked.output
    assert snapshot(client / ".fedlm-index") == before
