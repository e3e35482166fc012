"""Evaluation slices: named sets of token blocks, kept per client where a method needs that.

A comparison scores every method on the same slices: the held-out speakers (never trained
on) and the training clients' own held-out lines. The own slice stays split by client, so
that a personalized method (local-only training) can score each client's lines with that
client's own adapter; the sums in EvalResult add up exactly across clients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fedlm.data.blocks import Blocks, concat_blocks
from fedlm.data.types import FederatedDataset


def own_test_blocks(
    work, tokenizer, dataset: FederatedDataset, clients: Sequence[str], *, max_sequences: int
) -> dict[str, Blocks]:
    """Each client's test samples encoded on their own by the client work (fedlm.work), capped at `max_sequences` in all.

    Blocks are taken round-robin (every client's first block, then every client's second,
    ...) so that a cap spreads over as many clients as it can. Clients with no test lines
    are left out.
    """
    if max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
    packed = {c: work.encode(tokenizer, dataset.get(c).test).blocks for c in clients}
    taken = {c: 0 for c in clients}
    left, depth = max_sequences, 0
    while left > 0 and any(len(b) > depth for b in packed.values()):
        for c in clients:
            if left > 0 and len(packed[c]) > depth:
                taken[c] += 1
                left -= 1
        depth += 1
    return {c: packed[c].head(n) for c, n in taken.items() if n}


def join_blocks(per_client: dict[str, Blocks], seq_len: int) -> Blocks:
    """All clients' blocks as one set, in client order (one model scores them all)."""
    return concat_blocks([per_client[c] for c in sorted(per_client)], seq_len)


def split_round_robin(blocks: Blocks, parts: int) -> list[Blocks]:
    """`blocks` dealt into `parts` sets like cards: block i goes to set i mod parts."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    index = np.arange(len(blocks))
    return [blocks.take(index[i::parts]) for i in range(parts)]

