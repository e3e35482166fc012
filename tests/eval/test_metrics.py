"""Tests of evaluate() and EvalResult: loss, token count and next-token accuracy."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fedlm.data.blocks import IGNORE, Blocks, pack_texts
from fedlm.eval.metrics import EvalResult, evaluate
from fedlm.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny()
    return model, tokenizer


def _random_blocks(num_blocks: int, seq_len: int, seed: int = 0) -> Blocks:
    ids = torch.randint(0, 257, (num_blocks, seq_len), generator=torch.Generator().manual_seed(seed))
    return Blocks(ids, ids.clone())


class FixedLogits(torch.nn.Module):
    """Returns the same [seq_len, vocab] logits for every block, as a causal LM output."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], -1, -1))


# One block of tokens [0, 1, 2, 1, 0]; the targets are tokens 1..4 = [1, 2, 1, 0].
# Position 4 predicts nothing, so its logits row is never read.
TOKENS = torch.tensor([[0, 1, 2, 1, 0]])
LOGITS = torch.tensor(
    [
        [0.0, 2.0, 0.0],  # argmax 1, target 1: correct
        [0.0, 0.0, 1.0],  # argmax 2, target 2: correct
        [3.0, 0.0, 0.0],  # argmax 0, target 1: wrong
        [0.0, 1.0, 0.0],  # argmax 1, target 0: wrong
        [9.0, 9.0, 9.0],
    ]
)
# cross entropy of each row: log(sum exp) - logit of the target
ROW_LOSS = [
    math.log(2 + math.e**2) - 2,
    math.log(2 + math.e) - 1,
    math.log(math.e**3 + 2),
    math.log(2 + math.e),
]


# --- EvalResult -------------------------------------------------------------------------


def test_eval_result_adds_token_weighted():
    # Prepare: loss 2.0 over 1 token and 8/3 over 3 tokens
    first, second = EvalResult(loss_sum=2.0, tokens=1, correct=1), EvalResult(loss_sum=8.0, tokens=3, correct=0)
    # Execute
    both = first + second
    # Assert
    assert both == EvalResult(loss_sum=10.0, tokens=4, correct=1)
    assert both.loss == 2.5  # not the mean of 2 and 8/3
    assert both.accuracy == 0.25
    assert both.perplexity == pytest.approx(math.exp(2.5))


def test_an_empty_eval_result_reports_nan():
    # Execute
    empty = EvalResult()
    # Assert
    assert empty.tokens == 0
    assert all(math.isnan(v) for v in (empty.loss, empty.perplexity, empty.accuracy))
    assert EvalResult(1.0, 2, 1) + empty == EvalResult(1.0, 2, 1)


def test_as_dict_reports_every_metric():
    assert EvalResult(loss_sum=3.0, tokens=3, correct=2).as_dict() == pytest.approx(
        {"loss": 1.0, "perplexity": math.e, "accuracy": 2 / 3, "tokens": 3}
    )


# --- evaluate on hand-built logits ------------------------------------------------------


def test_accuracy_and_loss_on_hand_built_logits():
    # Prepare
    model = FixedLogits(LOGITS[None])
    # Execute
    result = evaluate(model, Blocks(TOKENS, TOKENS.clone()))
    # Assert
    assert (result.tokens, result.correct) == (4, 2)
    assert result.accuracy == 0.5
    assert result.loss == pytest.approx(sum(ROW_LOSS) / 4, abs=1e-6)


def test_padding_labels_are_excluded_from_tokens_loss_and_accuracy():
    # Prepare: the last two targets are padding, so only the two correct rows count
    labels = torch.tensor([[0, 1, 2, IGNORE, IGNORE]])
    model = FixedLogits(LOGITS[None])
    # Execute
    result = evaluate(model, Blocks(TOKENS, labels))
    # Assert
    assert (result.tokens, result.correct) == (2, 2)
    assert result.accuracy == 1.0
    assert result.loss == pytest.approx((ROW_LOSS[0] + ROW_LOSS[1]) / 2, abs=1e-6)


def test_the_first_label_of_a_block_is_never_a_target():
    # Prepare: labels[0] has no prediction before it, so changing it changes nothing
    model = FixedLogits(LOGITS[None])
    labels = torch.tensor([[IGNORE, 1, 2, 1, 0]])
    # Execute
    result = evaluate(model, Blocks(TOKENS, labels))
    # Assert
    assert (result.tokens, result.correct) == (4, 2)


def test_results_of_several_blocks_and_batches_add_up():
    # Prepare: three copies of the block in batches of 2 and 1
    model = FixedLogits(LOGITS[None])
    blocks = Blocks(TOKENS.repeat(3, 1), TOKENS.repeat(3, 1))
    # Execute
    result = evaluate(model, blocks, batch_size=2)
    # Assert
    assert (result.tokens, result.correct) == (12, 6)
    assert result.loss_sum == pytest.approx(3 * sum(ROW_LOSS), abs=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_restores_the_training_mode(training: bool):
    # Prepare
    model = FixedLogits(LOGITS[None]).train(training)
    # Execute
    evaluate(model, Blocks(TOKENS, TOKENS.clone()))
    # Assert
    assert model.training is training


def test_evaluate_on_no_blocks_counts_nothing():
    assert evaluate(FixedLogits(LOGITS[None]), Blocks(TOKENS[:0], TOKENS[:0])) == EvalResult()


# --- evaluate on the tiny model ----------------------------------------------------------


def test_evaluate_agrees_with_the_model_loss_on_full_blocks(tiny):
    # Prepare
    model, _ = tiny
    blocks = _random_blocks(num_blocks=5, seq_len=16)
    # Execute
    result = evaluate(model, blocks, batch_size=2)
    with torch.no_grad():
        reference = model(input_ids=blocks.input_ids, labels=blocks.labels).loss.item()
    # Assert
    assert result.tokens == 5 * 15
    assert result.loss == pytest.approx(reference, abs=1e-5)
    assert 0 <= result.correct <= result.tokens


def test_evaluate_agrees_with_the_model_loss_on_packed_text_with_padding(tiny):
    # Prepare
    model, tokenizer = tiny
    blocks = pack_texts(tokenizer, ["To be, or not to be", "that is the question"], seq_len=16)
    # Execute
    result = evaluate(model, blocks)
    with torch.no_grad():
        reference = model(input_ids=blocks.input_ids, labels=blocks.labels).loss.item()
    # Assert
    assert len(blocks) == 3  # 20 + 21 tokens with the end-of-text tokens, in blocks of 16
    assert result.tokens == 41 - 3  # the first token of each block has no target
    assert result.loss == pytest.approx(reference, abs=1e-5)


def test_evaluate_is_the_same_for_any_batch_size_and_split(tiny):
    # Prepare
    model, _ = tiny
    blocks = _random_blocks(num_blocks=5, seq_len=16, seed=1)
    # Execute
    whole = evaluate(model, blocks, batch_size=8)
    one_by_one = evaluate(model, blocks, batch_size=1)
    split = evaluate(model, blocks.head(2)) + evaluate(model, blocks.take([2, 3, 4]))
    # Assert
    for other in (one_by_one, split):
        assert other.tokens == whole.tokens and other.correct == whole.correct
        assert other.loss == pytest.approx(whole.loss, abs=1e-5)


def test_evaluate_is_deterministic(tiny):
    # Prepare
    model, _ = tiny
    blocks = _random_blocks(num_blocks=3, seq_len=16, seed=2)
    # Execute / Assert
    assert evaluate(model, blocks) == evaluate(model, blocks)
