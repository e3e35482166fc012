"""Seeds derived from (run seed, round, client), so every random draw is reproducible.

Each draw takes an explicit generator; nothing uses numpy's or torch's global state
except where torch offers no generator argument (dropout), and there the global seed is
set from the same derivation before each client's turn.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return zlib.crc32(part.encode())
    if part < 0:
        raise ValueError(f"seed parts must be non-negative, got {part}")
    return int(part)


def seed_sequence(seed: int, *parts: int | str) -> np.random.SeedSequence:
    return np.random.SeedSequence([_key(seed), *(_key(p) for p in parts)])


def make_rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A numpy generator for the stream named by `parts` under the run `seed`."""
    return np.random.default_rng(seed_sequence(seed, *parts))


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit integer seed for libraries that take one (torch)."""
    return int(seed_sequence(seed, *parts).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def torch_generator(seed: int, *parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))
