"""Streamed packing gives exactly the blocks of the whole-text packing it replaced, in bounded pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlm.config import DataSettings, RunConfig
from fedlm.data.blocks import IGNORE, Blocks, PackedBlocks, concat_blocks, pack_texts
from fedlm.models.tiny import build_tiny_tokenizer
from fedlm.work.causal_lm import CausalLmWork


def pack_texts_whole(tokenizer, texts: list[str], seq_len: int) -> Blocks:
    """The reference: pack_texts as it was before streaming (all texts tokenized in one call, int64 throughout),
    less a last block of one token (it has no target, so pack_texts drops it)."""
    if not texts:
        empty = torch.zeros((0, seq_len), dtype=torch.long)
        return Blocks(empty, empty.clone())
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for ids in encoded for t in (*ids, eos)), dtype=np.int64)
    if len(stream) % seq_len == 1:
        stream = stream[:-1]
    num_blocks = -(-len(stream) // seq_len)
    ids = np.full(num_blocks * seq_len, pad, dtype=np.int64)
    labels = np.full(num_blocks * seq_len, IGNORE, dtype=np.int64)
    ids[: len(stream)] = stream
    labels[: len(stream)] = stream
    shape = (num_blocks, seq_len)
    return Blocks(torch.from_numpy(ids.reshape(shape)), torch.from_numpy(labels.reshape(shape)))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def corpus(seed: int, count: int = 60) -> list[str]:
    """Texts of 0 to 80 characters, some empty, some not ASCII (several tokens per character)."""
    rng = np.random.default_rng(seed)
    words = ["the", "ward", "caf\u00e9", "na\u00efve", "\u2014", "\u6f22\u5b57", "", "dose", "12"]
    return [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in range(count)]


def assert_same_blocks(new: Blocks, old: Blocks) -> None:
    assert len(new) == len(old) and new.num_tokens == old.num_tokens
    assert new.input_ids.dtype == old.input_ids.dtype == torch.long
    assert torch.equal(new.input_ids, old.input_ids) and torch.equal(new.labels, old.labels)
    rows = np.random.default_rng(0).integers(0, len(old), size=(3, 4)) if len(old) else np.zeros((0,), np.int64)
    for got, want in zip(new.take(rows.reshape(-1)).input_ids, old.take(rows.reshape(-1)).input_ids, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(new.take(rows.reshape(-1)).labels, old.take(rows.reshape(-1)).labels)


@pytest.mark.parametrize("seq_len", [8, 13, 64])
@pytest.mark.parametrize("chunk_chars", [1, 50, 1 << 20])
def test_streamed_blocks_equal_the_whole_text_blocks(tokenizer, seq_len: int, chunk_chars: int):
    # Prepare
    texts = corpus(seq_len)
    # Execute
    new = pack_texts(tokenizer, texts, seq_len, chunk_chars=chunk_chars)
    # Assert
    assert_same_blocks(new, pack_texts_whole(tokenizer, texts, seq_len))


def test_streamed_blocks_are_kept_as_a_compact_stream(tokenizer):
    blocks = pack_texts(tokenizer, corpus(1), 16)
    assert isinstance(blocks, PackedBlocks) and blocks.stream.dtype == np.uint16


def test_the_tokenizer_sees_bounded_pieces(tokenizer):
    # Prepare: a spy that records how many characters each call gets
    calls: list[int] = []

    def spy(batch, **kwargs):
        calls.append(sum(len(t) for t in batch))
        return tokenizer(batch, **kwargs)

    spy.eos_token_id, spy.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    texts = ["x" * 10] * 100
    # Execute
    pack_texts(spy, texts, 16, chunk_chars=100)
    # Assert: ten calls of 100 characters, never the whole 1,000
    assert calls == [100] * 10


def test_max_blocks_gives_the_head_of_the_whole_packing_and_stops_tokenizing(tokenizer):
    # Prepare
    texts = corpus(5, count=200)
    whole = pack_texts_whole(tokenizer, texts, 16)
    # Execute
    head = pack_texts(tokenizer, texts, 16, max_blocks=7, chunk_chars=40)
    # Assert
    assert_same_blocks(head, whole.head(7))
    assert head.num_tokens == 7 * 16 < whole.num_tokens


def test_ids_past_uint16_are_kept_in_int32():
    # Prepare: a tokenizer whose vocabulary passes 65,536 ids
    class Wide:
        eos_token_id, pad_token_id = 70_000, 0

        def __call__(self, batch, **kwargs):
            return {"input_ids": [[65_535 + len(t), 3] for t in batch]}

    # Execute
    blocks = pack_texts(Wide(), ["a", "bb"], seq_len=4, chunk_chars=1)
    # Assert
    assert blocks.stream.dtype == np.int32
    assert blocks.input_ids.tolist() == [[65_536, 3, 70_000, 65_537], [3, 70_000, 0, 0]]
    assert blocks.labels.tolist() == [[65_536, 3, 70_000, 65_537], [3, 70_000, IGNORE, IGNORE]]


def test_packed_take_and_head_follow_python_indexing(tokenizer):
    # Prepare
    packed = pack_texts(tokenizer, ["abc", "d"], seq_len=2)  # [a b] [c EOS] [d EOS]
    whole = pack_texts_whole(tokenizer, ["abc", "d"], seq_len=2)
    # Execute / Assert
    assert torch.equal(packed.take([-1, 0]).input_ids, whole.take([-1, 0]).input_ids)
    for n in (-1, 0, 2, 9):
        assert_same_blocks(packed.head(n), whole.head(n))
    assert torch.equal(concat_blocks([packed, packed.head(1)], 2).labels, concat_blocks([whole, whole.head(1)], 2).labels)
    with pytest.raises(IndexError):
        packed.take([3])


def test_the_eval_set_is_the_head_of_all_clients_packed_in_order(tokenizer):
    # Prepare
    work = CausalLmWork(RunConfig(data=DataSettings(seq_len=16)))
    samples = {"a": corpus(7, count=30), "b": corpus(8, count=30), "c": corpus(9, count=30)}
    whole = concat_blocks([pack_texts_whole(tokenizer, samples[c], 16) for c in samples], 16)
    for max_sequences in (0, 3, len(pack_texts_whole(tokenizer, samples["a"], 16)) + 2, 10_000):
        # Execute
        eval_set = work.make_eval_set(tokenizer, samples, max_sequences=max_sequences)
        # Assert
        assert_same_blocks(eval_set.blocks, whole.head(max_sequences))
