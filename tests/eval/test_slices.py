"""Evaluation slices: the own slice's round-robin cap, and dealing held-out blocks to several adapters."""

from __future__ import annotations

import pytest
import torch

from fedlm.data.blocks import Blocks
from fedlm.data.types import ClientData, FederatedDataset
from fedlm.config import RunConfig, apply_overrides
from fedlm.eval.slices import join_blocks, own_test_blocks, split_round_robin
from fedlm.work import make_work

WORK = make_work(apply_overrides(RunConfig(), {"data": {"seq_len": 8}}))


class CharTokenizer:
    """One token per character, end-of-text 0: block counts follow from text lengths."""

    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def dataset() -> FederatedDataset:
    # With seq_len 8: "aaaaaaaaaaaaaaa" + eos is 16 tokens = 2 blocks; "b" * 23 + eos = 3 blocks; c has no test lines.
    return FederatedDataset("toy", (
        ClientData("a", ("x",), ("a" * 15,)),
        ClientData("b", ("x",), ("b" * 23,)),
        ClientData("c", ("x",), ()),
    ))


def test_own_blocks_are_capped_round_robin_across_clients():
    # Execute
    capped = own_test_blocks(WORK, CharTokenizer(), dataset(), ["a", "b", "c"], max_sequences=3)
    everything = own_test_blocks(WORK, CharTokenizer(), dataset(), ["a", "b", "c"], max_sequences=100)
    # Assert: a's first, b's first, then a's second; c has nothing to give and is left out.
    assert {c: len(b) for c, b in capped.items()} == {"a": 2, "b": 1}
    assert {c: len(b) for c, b in everything.items()} == {"a": 2, "b": 3}
    assert capped["b"].input_ids[0].tolist() == [ord("b")] * 8
    assert len(join_blocks(everything, 8)) == 5


def test_own_blocks_refuse_an_empty_cap():
    with pytest.raises(ValueError, match="max_sequences"):
        own_test_blocks(WORK, CharTokenizer(), dataset(), ["a"], max_sequences=0)


def test_round_robin_deals_every_block_once():
    # Prepare: block i holds the value i.
    ids = torch.arange(7).repeat_interleave(2).view(7, 2)
    blocks = Blocks(ids, ids.clone())
    # Execute
    parts = split_round_robin(blocks, 3)
    # Assert
    assert [p.input_ids[:, 0].tolist() for p in parts] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(p) for p in split_round_robin(blocks.head(2), 4)] == [1, 1, 0, 0]
