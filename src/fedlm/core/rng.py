"""Seeds derived from (run seed, round, client), so every random draw is reproducible.

Each draw takes an explicit generator; nothing uses numpy's or torch's global state
except where torch offers no generator argument (dropout), and there the global seed is
set from the same derivation before each client's turn.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _words(part: int | str) -> list[int]:
    """A part as a type tag and fixed-width 32-bit words, so that distinct names never collide.

    Strings go through SHA-256 (a 32-bit hash such as CRC32 collides for real client ids);
    integers take two words, so 2**32 and (0, 1) differ, and the count of parts is encoded.
    """
    if isinstance(part, str):
        digest = hashlib.sha256(part.encode()).digest()
        return [1, *np.frombuffer(digest, dtype=np.uint32).tolist()]
    if isinstance(part, bool) or not isinstance(part, int | np.integer):
        raise TypeError(f"seed parts are ints or strings, got {type(part).__name__}")
    if not 0 <= part < 2**64:
        raise ValueError(f"seed parts must be non-negative and below 2**64, got {part}")
    return [0, int(part) & 0xFFFFFFFF, int(part) >> 32]


def seed_sequence(seed: int, *parts: int | str) -> np.random.SeedSequence:
    entropy = [len(parts), *_words(seed)]
    for part in parts:
        entropy.extend(_words(part))
    return np.random.SeedSequence(entropy)


def make_rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A numpy generator for the stream named by `parts` under the run `seed`."""
    return np.random.default_rng(seed_sequence(seed, *parts))


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit integer seed for libraries that take one (torch)."""
    return int(seed_sequence(seed, *parts).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def torch_generator(seed: int, *parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))
