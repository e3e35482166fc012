"""Expand a 16-byte seed into a mask of uint32 words: AES-128 in counter mode.

The pairwise and self masks of SecAgg (Bonawitz et al., CCS 2017) are PRG outputs added
mod 2^32. AES-CTR from `cryptography` (OpenSSL, AES-NI) is a standard PRG and the
fastest one it offers here: 8.5 GB/s against ChaCha20's 4.9 GB/s measured on this
machine. A seed is only ever used for one mask, so the zero nonce is safe.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16
_NONCE = bytes(16)


class MaskStream:
    """Reusable buffers for masks of one length: `expand` fills and returns a uint32 view."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._zeros = np.zeros(4 * size, np.uint8)
        self._out = np.empty(4 * size + 16, np.uint8)  # update_into wants room for one extra block

    def expand(self, seed: bytes) -> np.ndarray:
        """The mask for `seed`; valid until the next call (the buffer is reused)."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a mask seed is {SEED_BYTES} bytes, not {len(seed)}")
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
        encryptor.update_into(memoryview(self._zeros), memoryview(self._out))
        return self._out[: 4 * self.size].view(np.uint32)

    def add(self, total: np.ndarray, seed: bytes, sign: int = 1) -> None:
        """total += sign * mask(seed), mod 2^32, in place."""
        mask = self.expand(seed)
        if sign > 0:
            np.add(total, mask, out=total)
        else:
            np.subtract(total, mask, out=total)
