"""Text samples to fixed-length token blocks (packed), and the batches a client trains on.

Samples are tokenized, each followed by the end-of-text token, concatenated and cut into
blocks of `seq_len` tokens; the last partial block is padded and its padding is ignored
by the loss (label -100). Packing wastes no compute on padding, as in GPT-2 pretraining.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass(frozen=True)
class Blocks:
    """input_ids and labels, both [num_blocks, seq_len]; labels are -100 on padding."""

    input_ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def take(self, index: Sequence[int] | np.ndarray) -> Blocks:
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return Blocks(self.input_ids[idx], self.labels[idx])

    def head(self, n: int) -> Blocks:
        return Blocks(self.input_ids[:n], self.labels[:n])


def trim_batch(batch: Blocks) -> Blocks:
    """`batch` without the columns past its last labelled token (right padding); the loss is unchanged."""
    labelled = (batch.labels != IGNORE).any(dim=0).nonzero()
    width = int(labelled[-1]) + 1 if len(labelled) else 1
    return Blocks(batch.input_ids[:, :width], batch.labels[:, :width])


def pad_sequences(rows: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int, pad_id: int) -> Blocks:
    """(input_ids, labels) rows of at most `seq_len` tokens, right-padded into one [rows, seq_len] Blocks."""
    ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        if len(row_ids) > seq_len or len(row_labels) != len(row_ids):
            raise ValueError(f"row {i} has {len(row_ids)} tokens and {len(row_labels)} labels; at most {seq_len}, equal")
        ids[i, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        labels[i, : len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
    return Blocks(ids, labels)


def empty_blocks(seq_len: int) -> Blocks:
    empty = torch.zeros((0, seq_len), dtype=torch.long)
    return Blocks(empty, empty.clone())


def pack_texts(tokenizer, texts: Sequence[str], seq_len: int) -> Blocks:
    """Tokenize `texts` and pack them into blocks of `seq_len` tokens."""
    if not texts:
        return empty_blocks(seq_len)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-text token; packing needs one")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for ids in encoded for t in (*ids, eos)), dtype=np.int64)
    num_blocks = -(-len(stream) // seq_len)
    ids = np.full(num_blocks * seq_len, pad, dtype=np.int64)
    labels = np.full(num_blocks * seq_len, IGNORE, dtype=np.int64)
    ids[: len(stream)] = stream
    labels[: len(stream)] = stream
    shape = (num_blocks, seq_len)
    return Blocks(torch.from_numpy(ids.reshape(shape)), torch.from_numpy(labels.reshape(shape)))


def concat_blocks(parts: Sequence[Blocks], seq_len: int) -> Blocks:
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_blocks(seq_len)
    return Blocks(torch.cat([p.input_ids for p in parts]), torch.cat([p.labels for p in parts]))


def batch_order(num_blocks: int, *, steps: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Block indices for `steps` batches: fresh permutations back to back, cut into batches.

    Shape [steps, batch_size]. With fewer blocks than batch_size a batch repeats blocks.
    """
    if num_blocks < 1:
        raise ValueError("a client with no training blocks cannot train")
    needed = steps * batch_size
    epochs = -(-needed // num_blocks)
    order = np.concatenate([rng.permutation(num_blocks) for _ in range(epochs)])
    return order[:needed].reshape(steps, batch_size)


def iter_batches(blocks: Blocks, order: np.ndarray) -> Iterator[Blocks]:
    for row in order:
        yield blocks.take(row)
