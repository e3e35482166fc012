"""Tests of packing texts into token blocks and of the batch order a client trains on."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedlm.data.blocks import IGNORE, Blocks, batch_order, concat_blocks, empty_blocks, iter_batches, pack_texts
from fedlm.models.tiny import build_tiny_tokenizer

# The byte tokenizer numbers the 256 byte symbols of GPT-2's byte-level alphabet in sorted order,
# so the printable ASCII bytes '!'..'~' (33..126) come first: 'a' (97) is id 97 - 33 = 64.
A, B, C, D = 64, 65, 66, 67
EOS = PAD = 256


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


# --- the byte tokenizer the tests rely on ------------------------------------------------


def test_the_byte_tokenizer_gives_one_token_per_byte(tokenizer):
    # Execute
    ids = tokenizer(["abcd", "é"], add_special_tokens=False)["input_ids"]
    # Assert
    assert ids[0] == [A, B, C, D]
    assert len(ids[1]) == 2  # two UTF-8 bytes
    assert tokenizer.eos_token_id == EOS and tokenizer.pad_token_id == PAD


# --- pack_texts -------------------------------------------------------------------------


def test_pack_texts_packs_with_end_of_text_and_pads_the_last_block(tokenizer):
    # Execute: stream a b EOS c d EOS -> 6 tokens, 2 blocks of 4
    blocks = pack_texts(tokenizer, ["ab", "cd"], seq_len=4)
    # Assert
    assert blocks.input_ids.tolist() == [[A, B, EOS, C], [D, EOS, PAD, PAD]]
    assert blocks.labels.tolist() == [[A, B, EOS, C], [D, EOS, IGNORE, IGNORE]]
    assert blocks.input_ids.dtype == torch.long and blocks.labels.dtype == torch.long
    assert len(blocks) == 2
    assert blocks.num_tokens == 6


def test_a_last_block_of_one_token_is_dropped_it_has_nothing_to_predict(tokenizer):
    # Prepare: a b EOS c EOS -> 5 tokens; a block of 4 and one of the lone EOS, whose only label is never a
    # target (labels shift by one), so a batch of it alone gave a 0/0 loss, NaN, and its update was refused
    blocks = pack_texts(tokenizer, ["ab", "c"], seq_len=4)
    # Assert
    assert blocks.input_ids.tolist() == [[A, B, EOS, C]]
    assert len(blocks) == 1 and blocks.num_tokens == 4


def test_pack_texts_adds_no_padding_when_the_stream_fills_the_blocks(tokenizer):
    # Execute: a b c EOS a b c EOS -> exactly 2 blocks of 4
    blocks = pack_texts(tokenizer, ["abc", "abc"], seq_len=4)
    # Assert
    assert blocks.input_ids.tolist() == [[A, B, C, EOS], [A, B, C, EOS]]
    assert torch.equal(blocks.labels, blocks.input_ids)
    assert blocks.num_tokens == 8


def test_pack_texts_keeps_an_empty_text_as_its_end_of_text_token(tokenizer):
    # Execute
    blocks = pack_texts(tokenizer, ["", "d"], seq_len=8)
    # Assert
    assert blocks.input_ids.tolist() == [[EOS, D, EOS, PAD, PAD, PAD, PAD, PAD]]
    assert blocks.num_tokens == 3


def test_pack_texts_of_no_texts_gives_no_blocks(tokenizer):
    # Execute
    blocks = pack_texts(tokenizer, [], seq_len=4)
    # Assert
    assert len(blocks) == 0
    assert tuple(blocks.input_ids.shape) == (0, 4) and tuple(blocks.labels.shape) == (0, 4)
    assert blocks.num_tokens == 0


def test_pack_texts_refuses_a_tokenizer_without_end_of_text():
    # Prepare
    no_eos = SimpleNamespace(eos_token_id=None, pad_token_id=None)
    # Execute / Assert
    with pytest.raises(ValueError, match="end-of-text"):
        pack_texts(no_eos, ["ab"], seq_len=4)


# --- Blocks helpers ---------------------------------------------------------------------


def test_take_head_and_concat_select_rows(tokenizer):
    # Prepare
    blocks = pack_texts(tokenizer, ["abc", "d"], seq_len=2)  # [a b] [c EOS] [d EOS]
    # Execute
    taken = blocks.take([2, 0, 2])
    head = blocks.head(1)
    joined = concat_blocks([head, empty_blocks(2), blocks.take([2])], seq_len=2)
    # Assert
    assert taken.input_ids.tolist() == [[D, EOS], [A, B], [D, EOS]]
    assert head.labels.tolist() == [[A, B]]
    assert joined.input_ids.tolist() == [[A, B], [D, EOS]]
    assert len(concat_blocks([empty_blocks(2)], seq_len=2)) == 0


def test_iter_batches_follows_the_order(tokenizer):
    # Prepare
    blocks = pack_texts(tokenizer, ["abc", "d"], seq_len=2)
    order = np.array([[2, 1], [0, 0]])
    # Execute
    batches = list(iter_batches(blocks, order))
    # Assert
    assert [b.input_ids.tolist() for b in batches] == [[[D, EOS], [C, EOS]], [[A, B], [A, B]]]


# --- batch_order ------------------------------------------------------------------------


def test_batch_order_has_one_row_per_step():
    # Execute
    order = batch_order(7, steps=5, batch_size=3, rng=np.random.default_rng(0))
    # Assert
    assert order.shape == (5, 3)
    assert order.min() >= 0 and order.max() < 7


def test_batch_order_uses_every_block_equally_often_over_full_epochs():
    # Prepare: 10 steps of 3 over 5 blocks = 6 full epochs
    rng = np.random.default_rng(0)
    # Execute
    flat = batch_order(5, steps=10, batch_size=3, rng=rng).reshape(-1)
    # Assert
    assert np.bincount(flat, minlength=5).tolist() == [6] * 5
    for epoch in flat.reshape(6, 5):
        assert sorted(epoch.tolist()) == [0, 1, 2, 3, 4]


def test_batch_order_is_deterministic_per_seed():
    # Execute
    first = batch_order(20, steps=4, batch_size=4, rng=np.random.default_rng(9))
    again = batch_order(20, steps=4, batch_size=4, rng=np.random.default_rng(9))
    other = batch_order(20, steps=4, batch_size=4, rng=np.random.default_rng(10))
    # Assert
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_batch_order_repeats_blocks_when_there_are_fewer_than_a_batch():
    # Execute: 5 slots from 2 blocks come from 3 permutations of [0, 1]
    order = batch_order(2, steps=1, batch_size=5, rng=np.random.default_rng(0))
    # Assert
    assert order.shape == (1, 5)
    assert sorted(np.bincount(order[0], minlength=2).tolist()) == [2, 3]
    assert sorted(order[0, :2].tolist()) == [0, 1] and sorted(order[0, 2:4].tolist()) == [0, 1]


def test_batch_order_with_one_block_repeats_it():
    assert batch_order(1, steps=2, batch_size=3, rng=np.random.default_rng(0)).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_batch_order_refuses_no_blocks_without_drawing():
    # Prepare
    rng = np.random.default_rng(0)
    before = _rng_state(rng)
    # Execute
    with pytest.raises(ValueError, match="no training blocks"):
        batch_order(0, steps=2, batch_size=2, rng=rng)
    # Assert
    assert _rng_state(rng) == before
