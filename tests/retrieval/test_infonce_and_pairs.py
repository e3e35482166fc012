"""InfoNCE by hand, the inverse cloze task's pairs, and ranking metrics by worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedlm.retrieval.infonce import in_batch_correct, info_nce
from fedlm.retrieval.pairs import ict_pair, ict_pairs, split_sentences
from fedlm.retrieval.ranking import RankingScore, gold_ranks, score_ranks, score_retrieved


def test_info_nce_equals_the_hand_worked_two_pair_batch():
    # Prepare: unit vectors; q0 . p0 = 1, q0 . p1 = 0; q1 . p0 = 0.6, q1 . p1 = 0.8.
    queries = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    passages = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Execute
    loss = info_nce(queries, passages, temperature=0.5)
    # Assert: scores / 0.5 = [[2, 0], [1.2, 1.6]]; row losses -log softmax of the diagonal.
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0))
    row1 = -1.6 + math.log(math.exp(1.2) + math.exp(1.6))
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert in_batch_correct(queries, passages) == 2


def test_a_pair_drawn_twice_is_not_its_own_negative():
    # Prepare: rows 0 and 2 are the same pair (a client with fewer pairs than the batch size).
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    passages = queries.clone()
    # Execute
    masked = info_nce(queries, passages, temperature=1.0, repeats=torch.tensor([0, 1, 0]))
    unmasked = info_nce(queries, passages, temperature=1.0)
    # Assert: with the copy masked, rows 0 and 2 see {e^1 (own), e^0 (row 1)}; row 1 sees {e^0, e^1, e^0}.
    pair_row = -1.0 + math.log(math.e + 1.0)
    other_row = -1.0 + math.log(math.e + 2.0)
    assert masked.item() == pytest.approx((2 * pair_row + other_row) / 3, abs=1e-6)
    assert unmasked.item() > masked.item()


def test_info_nce_refuses_mismatched_shapes_and_a_zero_temperature():
    with pytest.raises(ValueError, match="passages"):
        info_nce(torch.ones(3, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.ones(2, 2), torch.ones(2, 2), temperature=0.0)


def test_sentences_split_after_stops_and_semicolons():
    assert split_sentences("To be, or not to be; that is the question. Ay!\nWhat then?") == [
        "To be, or not to be;", "that is the question.", "Ay!", "What then?"]


def test_an_ict_pair_takes_one_sentence_out_or_keeps_it():
    text = "One fish. Two fish. Red fish. Blue fish."
    rng = np.random.default_rng(0)
    pick = int(np.random.default_rng(0).integers(4))  # ict_pair's first draw from the same generator
    pair = ict_pair(text, rng, keep_query=0.0, source=7)
    sentences = split_sentences(text)
    assert pair.query == sentences[pick] and pair.source == 7
    assert pair.passage == " ".join(s for i, s in enumerate(sentences) if i != pick)
    kept = ict_pair(text, np.random.default_rng(0), keep_query=1.0)
    assert kept.query == sentences[pick] and kept.passage == " ".join(sentences)
    assert ict_pair("Only one sentence here", rng) is None


def test_ict_pairs_count_the_documents_that_give_none_and_repeat_with_the_seed():
    texts = ["A. B.", "single", "C! D? E.", "also single"]
    pairs, dropped = ict_pairs(texts, np.random.default_rng(3))
    again, _ = ict_pairs(texts, np.random.default_rng(3))
    assert dropped == 2 and [p.source for p in pairs] == [0, 2]
    assert [(p.query, p.passage) for p in pairs] == [(p.query, p.passage) for p in again]
    assert "chars" in repr(pairs[0]) and "A." not in repr(pairs[0])  # a repr never shows the text
    with pytest.raises(ValueError, match="keep_query"):
        ict_pairs(texts, np.random.default_rng(0), keep_query=1.5)


def test_recall_and_mrr_at_k_by_hand():
    # Prepare: three queries whose gold is ranked 1st, 3rd and not at all (k = 2 cuts the 3rd too).
    retrieved = np.array([[5, 1, 2], [4, 6, 9], [7, 8, 0]])
    gold = np.array([5, 9, 3])
    # Execute
    at3, at2 = score_retrieved(retrieved, gold, k=3), score_retrieved(retrieved, gold, k=2)
    # Assert
    assert (at3.recall, at3.mrr) == pytest.approx((2 / 3, (1 + 1 / 3) / 3))
    assert (at2.recall, at2.mrr) == pytest.approx((1 / 3, 1 / 3))
    summed = at3 + RankingScore(1, 1, 0.5, 3)
    assert (summed.queries, summed.hits, summed.reciprocal_sum) == (4, 3, pytest.approx(1 + 1 / 3 + 0.5))
    with pytest.raises(ValueError, match="k = 3 and k = 2"):
        at3 + at2


def test_gold_ranks_count_ties_against_the_query():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.1]])
    assert gold_ranks(scores, np.array([2, 0])).tolist() == [2, 2]
    assert score_ranks(np.array([1, 11, 0]), k=10).hits == 1
