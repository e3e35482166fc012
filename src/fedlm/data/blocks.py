"""Text samples to fixed-length token blocks (packed), and the batches a client trains on.

Samples are tokenized, each followed by the end-of-text token, concatenated and cut into
blocks of `seq_len` tokens; the last partial block is padded and its padding is ignored
by the loss (label -100). Packing wastes no compute on padding, as in GPT-2 pretraining.

Packing streams: samples are tokenized about 64 KiB of text at a time and the token stream
is kept in the smallest integer type that holds it (`PackedBlocks`), so a client of 50 MB
needs about 100 MB for its tokens instead of the gigabytes that tokenizing it whole took.
Each sample is still tokenized on its own, exactly as before, so the blocks are the same.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100
# Characters of text tokenized per call: bounds the tokenizer's working memory. Measured on 20 MB of text with
# the tiny tokenizer: peak RSS +230 MB over the loaded text at 1 MiB a call, +120 MB at 256 KiB, +100 MB at
# 64 KiB, at the same speed.
CHUNK_CHARS = 1 << 16


@dataclass(frozen=True, repr=False)
class Blocks:
    """input_ids and labels, both [num_blocks, seq_len]; labels are -100 on padding. The repr shows no token."""

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

    def __repr__(self) -> str:
        return f"Blocks(<{len(self)} blocks of {self.input_ids.shape[-1]} tokens>)"


class PackedBlocks(Blocks):
    """Blocks cut from one token stream, kept as that stream: rows are made (int64, padded, labelled) when taken.

    The stream is held in the smallest integer type of its ids (uint16 for vocabularies up to
    65,536), a quarter of one int64 [blocks, seq_len] tensor and an eighth of the input_ids
    and labels pair. `take` and `head` give exactly what the pair would; reading
    `input_ids` or `labels` builds (and keeps) the whole pair, so keep that to small sets.
    """

    __eq__ = object.__eq__  # identity: comparing by value would build the whole pair
    __hash__ = object.__hash__

    def __init__(self, stream: np.ndarray, seq_len: int, pad_id: int) -> None:
        object.__setattr__(self, "stream", stream)
        object.__setattr__(self, "seq_len", int(seq_len))
        object.__setattr__(self, "pad_id", int(pad_id))

    def __len__(self) -> int:
        return -(-len(self.stream) // self.seq_len)

    @property
    def num_tokens(self) -> int:
        return len(self.stream)

    def take(self, index: Sequence[int] | np.ndarray) -> Blocks:
        rows = np.asarray(index, dtype=np.int64)
        count = len(self)
        if rows.size and (rows.min() < -count or rows.max() >= count):
            raise IndexError(f"block index out of range for {count} blocks")
        rows = np.where(rows < 0, rows + count, rows)
        positions = rows[..., None] * self.seq_len + np.arange(self.seq_len)  # [*rows.shape, seq_len]
        inside = positions < len(self.stream)
        last = max(len(self.stream) - 1, 0)
        tokens = self.stream[np.minimum(positions, last)].astype(np.int64) if rows.size else positions
        ids = np.where(inside, tokens, self.pad_id)
        labels = np.where(inside, tokens, IGNORE)
        return Blocks(torch.from_numpy(ids), torch.from_numpy(labels))

    def head(self, n: int) -> PackedBlocks:
        kept = len(range(len(self))[:n])
        return PackedBlocks(self.stream[: kept * self.seq_len], self.seq_len, self.pad_id)

    @functools.cached_property
    def _whole(self) -> Blocks:
        return self.take(np.arange(len(self)))

    @property
    def input_ids(self) -> torch.Tensor:  # type: ignore[override]
        return self._whole.input_ids

    @property
    def labels(self) -> torch.Tensor:  # type: ignore[override]
        return self._whole.labels

    def __repr__(self) -> str:
        return f"PackedBlocks(<{len(self)} blocks of {self.seq_len} tokens, {self.num_tokens} labelled>)"


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


def text_batches(texts: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
    """`texts` in order, grouped into lists of about `chunk_chars` characters (a longer text is a list of its own)."""
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def stream_with_ends(encoded: Sequence[Sequence[int]], eos: int) -> np.ndarray:
    """The token ids of `encoded` texts back to back, each followed by `eos`: uint16 when every id fits, else int32."""
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
    stream = np.insert(flat, np.cumsum(lengths), eos)  # eos after each text; an empty text is its eos alone
    return stream.astype(np.uint16 if stream.max() < 1 << 16 else np.int32)


def pack_texts(
    tokenizer, texts: Iterable[str], seq_len: int, *, max_blocks: int | None = None, chunk_chars: int = CHUNK_CHARS,
) -> Blocks:
    """Tokenize `texts` and pack them into blocks of `seq_len` tokens (at most `max_blocks`: the first ones).

    Texts are tokenized `chunk_chars` characters at a time, each on its own as a single call
    on all of them would, so memory stays bounded by the tokens kept, not by the tokenizer's
    working set on the whole client. With `max_blocks`, tokenizing stops once they are filled.
    """
    texts = iter(texts)
    first = next(texts, None)
    if first is None:
        return empty_blocks(seq_len)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-text token; packing needs one")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    limit = None if max_blocks is None else max_blocks * seq_len
    parts, total = [], 0
    for batch in text_batches(itertools.chain([first], texts), chunk_chars):
        if limit is not None and total >= limit:
            break
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        parts.append(stream_with_ends(encoded, eos))
        total += len(parts[-1])
    if not parts:
        return empty_blocks(seq_len)
    stream = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if limit is not None and len(stream) > limit:
        stream = stream[:limit].copy()
    if len(stream) % seq_len == 1:  # a last block of one token has no next token to predict: its loss would be 0/0
        stream = stream[:-1]
    return PackedBlocks(stream, seq_len, pad)


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
