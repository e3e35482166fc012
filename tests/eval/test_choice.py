"""Multiple choice by option log-likelihood: hand-computed scores on a bigram model, the JSONL reader, built-in questions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedlm.eval.choice import ChoiceQuestion, ChoiceScore, option_log_likelihoods, read_choice_jsonl, score_choices
from fedlm.eval.metrics import EvalResult
from fedlm.models.tiny import build_tiny_tokenizer
from fedlm.work.instruction import next_reply_questions

VOCAB = 5


class NoCache:
    """A bigram model needs no past: the cache is a stand-in that only repeats itself."""

    def batch_repeat_interleave(self, repeats: int) -> None:
        pass


class Bigram(torch.nn.Module):
    """logits[b, t] = table[input[b, t]]: the next token depends on the current one only."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, cache=None, use_cache=False):
        return type("Out", (), {"logits": self.table[input_ids], "cache": NoCache()})()


def log_p(table: torch.Tensor, prev: int, nxt: int) -> float:
    return float(torch.log_softmax(table[prev], -1)[nxt])


def test_option_scores_are_the_summed_and_mean_log_probabilities_of_their_tokens():
    # Prepare
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0))
    model = Bigram(table)
    question = ChoiceQuestion(prompt=(0, 1), options=((2,), (3, 4, 2)), answer=1)
    # Execute
    sums, means = option_log_likelihoods(model, question, max_tokens=16)
    # Assert: option 0 is p(2 | 1); option 1 is p(3 | 1) p(4 | 3) p(2 | 4).
    expected_1 = log_p(table, 1, 3) + log_p(table, 3, 4) + log_p(table, 4, 2)
    assert sums == pytest.approx([log_p(table, 1, 2), expected_1], abs=1e-6)
    assert means == pytest.approx([log_p(table, 1, 2), expected_1 / 3], abs=1e-6)


def test_total_and_per_token_scoring_can_disagree_and_both_are_counted():
    # Prepare: p(4 | 1) = 0.55, p(2 | 1) = 0.4, p(3 | 2) = 0.9 (the rest of each row is ~0).
    table = torch.full((VOCAB, VOCAB), -1e4)
    table[1, 4], table[1, 2], table[1, 0] = math.log(0.55), math.log(0.4), math.log(0.05)
    table[2, 3], table[2, 0] = math.log(0.9), math.log(0.1)
    question = ChoiceQuestion(prompt=(1,), options=((4,), (2, 3)), answer=1)
    # Execute
    sums, means = option_log_likelihoods(Bigram(table), question, max_tokens=8)
    score = score_choices(Bigram(table), [question], max_tokens=8)
    # Assert: totals log 0.55 = -0.598 > log 0.36 = -1.022 pick option 0; means -0.598 < -0.511 pick option 1.
    assert sums == pytest.approx([math.log(0.55), math.log(0.36)], abs=1e-5)
    assert means == pytest.approx([math.log(0.55), math.log(0.36) / 2], abs=1e-5)
    assert (score.correct, score.correct_norm, score.questions, score.chance) == (0, 1, 1, 0.5)


def test_cached_scoring_on_a_real_llama_equals_scoring_each_option_in_full():
    # Prepare: the tiny Llama, and a reference that reads prompt + option whole for every option.
    from fedlm.models.base import load_base_model

    model = load_base_model("tiny").model
    question = ChoiceQuestion(prompt=tuple(range(40, 60)), options=((70, 71, 72), (80,), (90, 91, 92, 93, 94)), answer=2)

    def reference(option):
        ids = torch.tensor([question.prompt + option])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        start = len(question.prompt)
        return sum(float(logprobs[start + j - 1, t]) for j, t in enumerate(option))

    # Execute
    with torch.no_grad():
        expected = [reference(o) for o in question.options]
    sums, means = option_log_likelihoods(model, question, max_tokens=64)
    # Assert
    assert sums == pytest.approx(expected, abs=1e-4)
    assert means == pytest.approx([e / len(o) for e, o in zip(expected, question.options, strict=True)], abs=1e-4)


def test_a_prompt_too_long_is_cut_from_the_left_keeping_the_option_whole():
    # Prepare: only the last prompt token matters to a bigram model, so a cut prompt scores the same.
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(1))
    long = ChoiceQuestion(prompt=(0, 3, 3, 3, 3, 1), options=((2, 2), (4, 0)), answer=0)
    # Execute: the longest option has 2 tokens, so max_tokens = 3 leaves the prompt's last token only.
    cut, _ = option_log_likelihoods(Bigram(table), long, max_tokens=3)
    whole, _ = option_log_likelihoods(Bigram(table), long, max_tokens=64)
    # Assert
    assert cut == pytest.approx(whole, abs=1e-6)


def test_choice_counts_add_up_across_eval_results():
    a = EvalResult(1.0, 2, 1, ChoiceScore(1, 2, 3, 1.0))
    b = EvalResult(2.0, 2, 0, ChoiceScore(2, 0, 1, 0.25))
    total = a + b
    assert total.choice == ChoiceScore(3, 2, 4, 1.25)
    assert total.as_dict()["choice_accuracy"] == 0.75 and total.as_dict()["choice_chance"] == 1.25 / 4
    assert "choice_accuracy" not in EvalResult(1.0, 2, 1).as_dict()  # no questions, no columns


def test_the_jsonl_reader_takes_index_and_letter_answers_and_refuses_bad_lines_with_file_and_line(tmp_path):
    # Prepare
    good = tmp_path / "mc.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": 1}) + "\n\n"
                    + json.dumps({"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo"], "answer": "b"}) + "\n")
    # Execute
    records = read_choice_jsonl(good)
    # Assert
    assert [(r.choices, r.answer) for r in records] == [(("3", "4"), 1), (("Rome", "Paris", "Oslo"), 1)]
    assert records[1].source == f"{good}, line 3"
    for line, message in [({"question": "q", "choices": ["a"], "answer": 0}, "at least 2"),
                          ({"question": "q", "choices": ["a", "b"], "answer": 2}, "not one of the 2 choices"),
                          ({"question": "q", "choices": ["a", "b"], "answer": "AB"}, "one letter"),
                          ({"choices": ["a", "b"], "answer": 0}, "question")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"question": "ok", "choices": ["x", "y"], "answer": 0}) + "\n" + json.dumps(line) + "\n")
        with pytest.raises(ValueError, match=rf"bad\.jsonl, line 2: .*{message}"):
            read_choice_jsonl(bad)
    with pytest.raises(ValueError, match="is not a file"):
        read_choice_jsonl(tmp_path / "missing.jsonl")


def test_built_in_questions_put_the_true_reply_among_distinct_distractors_deterministically():
    # Prepare
    tokenizer = build_tiny_tokenizer()
    pool = [(f"client{i % 2}", [{"role": "user", "content": f"cue {i}"}], f"reply {i}") for i in range(6)]
    # Execute
    questions = next_reply_questions(tokenizer, pool, options=4, cap=5, seed=0)
    again = next_reply_questions(tokenizer, pool, options=4, cap=5, seed=0)
    # Assert: 5 questions, each with 4 distinct options, the answer being the reply to its own cue.
    assert questions == again and len(questions) == 5
    for q in questions:
        prompt = tokenizer.decode(q.prompt)
        cue = prompt[prompt.index("cue ") + 4]
        options = [tokenizer.decode(o) for o in q.options]
        assert len(set(options)) == 4 and options[q.answer] == f"reply {cue}"
        assert q.owner == f"client{int(cue) % 2}"  # the client whose held-out sample asked it
    assert len({q.answer for q in questions}) > 1  # the position is drawn, not always first
    assert next_reply_questions(tokenizer, pool[:3], options=4, cap=5, seed=0) == ()  # 3 distinct replies < 4 options


def test_built_in_options_are_cut_to_the_shortest_so_length_does_not_decide():
    # Prepare: replies of 3, 5, 8 and 12 bytes (one token per byte).
    tokenizer = build_tiny_tokenizer()
    replies = ["abc", "defgh", "ijklmnop", "qrstuvwxyz!?"]
    pool = [("c", [{"role": "user", "content": f"cue {i}"}], reply) for i, reply in enumerate(replies)]
    # Execute
    questions = next_reply_questions(tokenizer, pool, options=4, cap=4, seed=0)
    # Assert: every option is 3 tokens, the true one's first 3.
    assert len(questions) == 4
    for q in questions:
        assert {len(o) for o in q.options} == {3}
        cue = int(tokenizer.decode(q.prompt).split("cue ")[1][0])
        assert tokenizer.decode(q.options[q.answer]) == replies[cue][:3]


def test_options_that_read_alike_once_cut_make_no_question():
    tokenizer = build_tiny_tokenizer()
    pool = [("c", [{"role": "user", "content": f"cue {i}"}], reply) for i, reply in enumerate(["ab", "abc", "abd", "abe"])]
    assert next_reply_questions(tokenizer, pool, options=4, cap=4, seed=0) == ()  # all cut to "ab"
