"""The "retrieval" client work on the tiny encoder: pooling, equivalence to centralized training, evaluation, what leaves."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fedlm.sim.trainers as trainers
from fedlm.config import RunConfig, config_from_dict
from fedlm.experiment.compare import choose_training_clients, fedavg_config, plain_config
from fedlm.experiment.methods import federated_simulation, train_centralized
from fedlm.experiment.settings import make_settings
from fedlm.retrieval.encoder import embed_texts, load_encoder, mean_pool
from fedlm.retrieval.ranking import gold_ranks
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare
from fedlm.work.retrieval import Collection, RetrievalWork, score_collection

RETRIEVAL = {"model": {"name": "tiny-encoder"}, "task": {"kind": "retrieval"},
             "federation": {"rounds": 1, "clients_per_round": 2}, "client": {"local_steps": 2, "batch_size": 8, "lr": 1e-2},
             "eval": {"clients": 2, "max_sequences": 12}}


def retrieval_config(**tables) -> RunConfig:
    merged = {k: dict(v) for k, v in RETRIEVAL.items()}
    for table, values in tables.items():
        merged.setdefault(table, {}).update(values)
    return config_from_dict(merged)


def test_mean_pooling_averages_unmasked_tokens_then_normalises():
    hidden = torch.tensor([[[3.0, 0.0], [1.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # mean of the two kept rows = (2, 2); normalised = (1, 1) / sqrt(2)
    np.testing.assert_allclose(mean_pool(hidden, mask).numpy(), [[2 ** -0.5, 2 ** -0.5]], atol=1e-7)


def test_embeddings_do_not_depend_on_batching_or_padding():
    base = load_encoder("tiny-encoder")
    texts = ["a", "a much longer text than the first one", "mid length"]
    together = embed_texts(base.model, base.tokenizer, texts, length=64, batch_size=3)
    alone = np.stack([embed_texts(base.model, base.tokenizer, [t], length=64)[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)


def test_the_adapter_is_lora_on_the_encoders_query_and_value_projections():
    sim = prepare(retrieval_config())
    names = [e.name for e in sim.adapter.shared_spec.entries]
    assert names and all(("query" in n or "value" in n) and "lora_" in n for n in names)
    assert len(names) == 2 * 2 * 2  # two layers x (query, value) x (A, B)


def test_one_round_of_fedavg_on_one_client_equals_centralized_training_on_the_same_batches():
    # Prepare: one play holds all the training pairs; 3 local steps of batch 8.
    config = plain_config(retrieval_config())
    settings = make_settings({"train_clients": 1, "rounds": 1, "clients_per_round": 1, "local_steps": 3})
    sim = prepare(config)
    (client,) = choose_training_clients(sim, 1, config.run.seed)
    pairs = sim.train_blocks(client)
    assert len(pairs) > config.client.batch_size
    # Execute: FedAvg through the engine, then one optimizer over the same pairs, batches, seed and loss.
    federated = simulate(federated_simulation(sim, fedavg_config(config, settings), (client,))).state.global_vector
    steps = dataclasses.replace(config.client, local_steps=settings.local_steps)
    result = train_centralized(sim.adapter, pairs, steps, seed=config.run.seed, name=client, loss_fn=sim.work.loss)
    centralized = sim.adapter.read_shared(np.empty_like(federated))
    # Assert: the same adapter to 1e-6, and one that moved far beyond that.
    assert result.steps == 3
    np.testing.assert_allclose(federated, centralized, rtol=0, atol=1e-6)
    assert np.abs(centralized - sim.adapter.initial_shared).max() > 1e-3


def test_collection_scores_equal_a_brute_force_ranking_of_the_same_embeddings():
    # Prepare: four documents, three queries whose gold documents are 2, 0 and 3.
    base = load_encoder("tiny-encoder")
    tok = base.tokenizer
    documents = ["the king is dead", "long live the queen", "a horse, a horse", "my kingdom for a horse"]
    queries = ["long live", "the dead king", "kingdom horse"]
    gold = (2, 0, 3)
    collection = Collection(tuple(tuple(r) for r in tok(queries)["input_ids"]),
                            tuple(tuple(r) for r in tok(documents)["input_ids"]), gold)
    # Execute
    result = score_collection(base.model, collection, tok.pad_token_id, batch_size=2, temperature=0.05)
    # Assert: the same ranks and loss from embeddings computed directly.
    q = embed_texts(base.model, tok, queries, length=64)
    d = embed_texts(base.model, tok, documents, length=64)
    scores = q @ d.T
    ranks = gold_ranks(scores, np.array(gold))
    expected_loss = torch.nn.functional.cross_entropy(torch.from_numpy(scores / 0.05), torch.tensor(gold), reduction="sum")
    assert result.tokens == 3 and result.correct == int((ranks == 1).sum())
    assert result.ranking.hits == 3  # four documents: every gold is in the top 10
    assert result.ranking.reciprocal_sum == pytest.approx(float((1 / ranks).sum()))
    assert result.loss_sum == pytest.approx(float(expected_loss), rel=1e-4)


def test_a_simulated_round_sends_only_the_update_vector_and_numbers(monkeypatch):
    # Prepare: record everything a client hands back in a simulated round.
    sim = prepare(retrieval_config())
    sent = []
    original = trainers.run_task

    def recording(*args, **kwargs):
        update = original(*args, **kwargs)
        sent.append(update)
        return update

    monkeypatch.setattr(trainers, "run_task", recording)
    # Execute
    simulate(sim)
    # Assert: per client, one float32 vector of the adapter's size and a few numbers; no text, no embedding.
    assert len(sent) == 2
    size = sim.adapter.shared_spec.size
    for update in sent:
        assert update.vector.dtype == np.float32 and update.vector.shape == (size,)
        assert set(update.metrics) <= {"train_loss", "last_loss", "steps", "tokens", "clipped", "norm", "redacted", "bytes_up"}
        assert all(isinstance(v, int | float) for v in update.metrics.values())
        fields = {f.name: getattr(update, f.name) for f in dataclasses.fields(update)}
        assert {k: type(v).__name__ for k, v in fields.items() if k not in ("vector", "metrics")} == {
            "round": "int", "version": "int", "client_id": "str", "num_samples": "int"}


def test_an_evaluation_collection_takes_each_query_out_of_its_document_and_keeps_gold_after_the_cap():
    # Prepare: five documents, one of a single sentence (a candidate but no query)
    config = retrieval_config()
    work, tok = RetrievalWork(config), load_encoder("tiny-encoder").tokenizer
    texts = ["Alpha one. Alpha two.", "Lonely line", "Beta one! Beta two? Beta three.", "Gamma one; gamma two.",
             "Delta one. Delta two."]
    # Execute: at most two queries
    collection, cut, single = work.collection(tok, "site", texts, max_queries=2)
    # Assert: every document is a candidate; the two queries' golds are their documents, without the query sentence
    assert len(collection.documents) == 5 and len(collection.queries) == 2 and single == 1 and cut == 0
    decoded = [tok.decode(list(d), skip_special_tokens=True) for d in collection.documents]
    for query, gold in zip(collection.queries, collection.gold, strict=True):
        sentence = tok.decode(list(query), skip_special_tokens=True)
        assert sentence in texts[gold] and sentence not in decoded[gold]
    assert decoded[1] == "Lonely line" and collection.gold == (0, 2)


def test_a_client_whose_documents_all_have_one_sentence_is_refused_with_the_reason():
    work, tok = RetrievalWork(retrieval_config()), load_encoder("tiny-encoder").tokenizer
    with pytest.raises(ValueError, match="none of the client's 2 documents has two sentences"):
        work.encode(tok, ["One line", "Another line"])


def test_auto_evaluation_holds_out_clients_for_the_encoder_kinds_even_with_few_clients(tmp_path):
    # Prepare: three sites, fewer than 2 x eval.clients (which would pick per_site for a language model)
    for site in range(3):
        (tmp_path / f"site{site}").mkdir()
        (tmp_path / f"site{site}" / "d.txt").write_text("\n\n".join(f"Note {i}. Of site {site}." for i in range(6)))
    config = retrieval_config(data={"source": "folder", "path": str(tmp_path)}, eval={"clients": 1},
                              redaction={"enabled": "off"})
    # Execute
    sim = prepare(config)
    # Assert
    assert sim.eval_mode == "held_out" and len(sim.eval_clients) == 1 and len(sim.population) == 2
