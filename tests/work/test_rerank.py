"""Rerank work: the listwise loss, hard negatives from the client's own collection, the head in the update, a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedlm.config import RunConfig, apply_overrides
from fedlm.models.card import BaseOrigin
from fedlm.models.lora import export_adapter
from fedlm.retrieval.encoder import build_tiny_encoder_tokenizer, cached_tiny_encoder_dir, minilm_dir
from fedlm.retrieval.rerank import (
    adapter_base_dir, join_pair, listwise_loss, load_reranker, mine_negatives, rerank_scores,
)
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare
from fedlm.work import make_work

TOKENIZER = build_tiny_encoder_tokenizer()  # [CLS] bytes [SEP]: lengths follow from the text
HEAD = "classifier.modules_to_save"


def note(client: str, k: int) -> str:
    """A document of three sentences, each found in this document only (about 40 tokens)."""
    return f"{client} {k} opens. Matter {k} of {client}. {client} {k} ends."


def write_federation(root, clients=("ann", "bob", "cat", "dan"), notes=8):
    root.mkdir()
    for client in clients:
        lines = [json.dumps({"text": note(client, k)}) for k in range(notes)]
        (root / f"{client}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def rerank_config(path, **overrides) -> RunConfig:
    settings = {
        "model": {"name": "tiny-encoder"}, "task": {"kind": "rerank"},
        "data": {"source": "folder", "path": str(path), "seq_len": 96, "test_fraction": 0.5},
        "retrieval": {"negatives": 2, "candidates": 4, "keep_query": 0.0},
        "federation": {"rounds": 1, "clients_per_round": 2},
        "client": {"local_steps": 2, "batch_size": 2, "lr": 1e-2},
        "eval": {"mode": "held_out", "clients": 1, "max_sequences": 4},
    }
    for table, values in overrides.items():
        settings[table] = {**settings.get(table, {}), **values}
    return apply_overrides(RunConfig(), settings)


def test_listwise_loss_by_a_hand_worked_example():
    # Prepare: positive first; the second list lacks one negative (-inf).
    scores = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, float("-inf")]])
    # Execute
    loss = listwise_loss(scores)
    # Assert: -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) and -log(1/2), averaged.
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(2)) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(listwise_loss(scores, reduction="sum")) == pytest.approx(2 * expected, abs=1e-6)
    assert float(listwise_loss(torch.tensor([[0.3, float("-inf")]]))) == 0.0  # nothing to tell apart


def planted():
    """Six unit documents at angles 0, 10, 20, 30, 40, 50 degrees; query 0 sits on document 0, its source."""
    angles = np.radians([0, 10, 20, 30, 40, 50])
    documents = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return documents[:1].copy(), documents


def test_mining_draws_from_the_nearest_documents_but_never_the_source():
    # Prepare
    queries, documents = planted()
    # Execute: 2 negatives out of the top 3 candidates, under 40 seeds.
    draws = [mine_negatives(queries, documents, [0], negatives=2, candidates=3, rng=np.random.default_rng(seed))[0]
             for seed in range(40)]
    again = mine_negatives(queries, documents, [0], negatives=2, candidates=3, rng=np.random.default_rng(7))[0]
    # Assert: document 0, the nearest, is the source and never drawn; the pool is the next three (10-30 degrees),
    # each draw two distinct ones in rank order; the same generator draws the same.
    assert set(np.concatenate(draws).tolist()) == {1, 2, 3}
    assert all(len(set(d)) == 2 and list(d) == sorted(d) for d in draws)
    assert np.array_equal(again, draws[7])


def test_a_small_collection_pads_the_negatives_it_lacks():
    queries, documents = planted()
    negatives = mine_negatives(queries, documents[:3], [0], negatives=3, candidates=4, rng=np.random.default_rng(0))
    assert negatives.tolist() == [[1, 2, -1]]


def test_join_pair_is_the_tokenizers_pair_template_and_cuts_the_passage_first():
    query, passage = TOKENIZER("ab")["input_ids"], TOKENIZER("cdef")["input_ids"]  # 4 and 6 tokens
    ids, segments = join_pair(query, passage, 64)
    assert ids == TOKENIZER("ab", "cdef")["input_ids"]
    assert segments == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    cut, cut_segments = join_pair(query, passage, 7)  # [CLS] a b [SEP] c d [SEP]
    assert cut == query + passage[1:3] + passage[-1:] and cut_segments == [0] * 4 + [1] * 3


def test_each_list_is_the_pair_then_negatives_from_the_clients_own_other_documents(tmp_path):
    # Prepare: two clients whose documents differ by name; every sentence occurs in one document only.
    config = rerank_config(write_federation(tmp_path / "fed"), retrieval={"negatives": 3, "candidates": 5})
    work = make_work(config)
    texts = [note("ann", k) for k in range(8)]
    others = {note("bob", k) for k in range(8)}
    # Execute
    lists = work.encode(TOKENIZER, texts).blocks
    # Assert: every pair of the client is a list of 1 + 3 rows.
    assert len(lists) == 8 and lists.slots.shape == (8, 4) and (lists.slots >= 0).all()
    batch = lists.take(range(8))
    ids, segments = batch.inputs["input_ids"], batch.inputs["token_type_ids"]
    for i in range(8):
        rows = batch.slots[i].tolist()
        query = TOKENIZER.decode(ids[rows[0]][segments[rows[0]] == 0], skip_special_tokens=True)
        passages = [TOKENIZER.decode(ids[r][(segments[r] == 1)], skip_special_tokens=True) for r in rows]
        source = next(t for t in texts if query in t)
        assert passages[0] == source.replace(query, "").replace("  ", " ").strip()  # ICT: the rest of the note
        for negative in passages[1:]:
            assert negative in texts and negative != source and negative not in others


def test_the_cross_encoders_head_travels_in_the_update_also_under_ffa(tmp_path):
    path = write_federation(tmp_path / "fed")
    for aggregation in ("fedit", "ffa"):
        # Execute
        work = make_work(rerank_config(path, lora={"aggregation": aggregation}))
        adapter = work.attach(work.load_base())
        names = adapter.shared_spec.names
        head = [e for e in adapter.shared_spec.entries if HEAD in e.name]
        # Assert: the one-output head (32 weights and a bias) is shared; FFA shares B only besides it.
        assert sorted(e.shape for e in head) == [(1,), (1, 32)]
        assert any("lora_B" in n for n in names)
        assert any("lora_A" in n for n in names) == (aggregation == "fedit")


@pytest.fixture(scope="module")
def rerank_run(tmp_path_factory):
    """One short federated round of the reranker on a four-client folder."""
    config = rerank_config(write_federation(tmp_path_factory.mktemp("rerank") / "fed"))
    sim = prepare(config)
    return sim, simulate(sim)


def test_a_short_rerank_run_reports_finite_ranking_figures_and_moves_the_head(rerank_run):
    sim, result = rerank_run
    figures = result.records[-1]["eval"]
    # Assert: recall@10, MRR@10 and the listwise loss of the reranked first stage, over the held-out client's queries.
    assert {"recall_at_10", "mrr_at_10", "loss", "accuracy"} <= set(figures)
    assert all(math.isfinite(figures[k]) for k in ("recall_at_10", "mrr_at_10", "loss", "accuracy"))
    assert 0 <= figures["mrr_at_10"] <= figures["recall_at_10"] <= 1 and figures["queries"] == 4
    moved = result.state.global_vector - sim.adapter.initial_shared
    head = [e for e in sim.adapter.shared_spec.entries if HEAD in e.name]
    assert all(np.abs(moved[e.offset : e.stop]).max() > 0 for e in head)


def test_an_exported_reranker_loads_and_scores_as_the_trained_model(rerank_run, tmp_path):
    # Prepare: the global adapter exported as a run does.
    sim, result = rerank_run
    exported = export_adapter(sim.adapter, result.state.global_vector, tmp_path / "adapter",
                              base=BaseOrigin(str(sim.base.path)))
    passages = [note("ann", k) for k in range(5)]
    # Execute
    reranker = load_reranker(exported)
    loaded = rerank_scores(reranker.model, reranker.tokenizer, "matter 3 of ann", passages, length=96)
    trained = rerank_scores(sim.adapter.model, sim.base.tokenizer, "matter 3 of ann", passages, length=96)
    # Assert
    assert loaded.shape == (5,) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, trained, rtol=0, atol=1e-5)
    assert loaded.std() > 0


def test_an_adapters_base_is_found_by_path_by_hub_id_or_by_a_fedlm_encoders_name(tmp_path):
    # An older run recorded model.name "tiny-encoder" as a path under its working directory.
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"task_type": "SEQ_CLS", "base_model_name_or_path": str(tmp_path / "tiny-encoder")}))
    assert adapter_base_dir(tmp_path) == cached_tiny_encoder_dir()
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"task_type": "SEQ_CLS", "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"}))
    assert adapter_base_dir(tmp_path) == minilm_dir()  # the package's copy of the Hub's weights
    (tmp_path / "adapter_config.json").write_text(json.dumps({"task_type": "FEATURE_EXTRACTION"}))
    with pytest.raises(ValueError, match="no reranker"):
        adapter_base_dir(tmp_path)


def test_mining_is_seeded_by_the_clients_texts(tmp_path):
    # The same texts give the same lists under the same run seed (the draw needs no client id).
    work = make_work(rerank_config(write_federation(tmp_path / "fed"), retrieval={"negatives": 2, "candidates": 6}))
    texts = [note("cat", k) for k in range(8)]
    first, second = work.encode(TOKENIZER, texts).blocks, work.encode(TOKENIZER, texts).blocks
    assert np.array_equal(first.slots, second.slots) and np.array_equal(first.rows.ids, second.rows.ids)
