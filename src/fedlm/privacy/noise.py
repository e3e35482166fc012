"""Gaussian noise for differential privacy, drawn from a cryptographically secure source.

DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963) adds N(0, (z C)^2) to the sum of
clipped updates. numpy's generators are predictable from their state, which an
adversary who learns it could subtract; here every noise vector comes from a ChaCha20
keystream keyed by 32 bytes of os.urandom (the `cryptography` package, i.e. OpenSSL),
turned into normals by the Box-Muller transform in float64. Floating-point noise is
not immune to the precision attacks of Mironov 2012 ("On significance of the least
significant bits for differential privacy"); a discrete Gaussian is future work.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

TWO_PI = 2.0 * np.pi
_UNIT = 1.0 / 2.0**53


def secure_uniform(count: int) -> np.ndarray:
    """`count` uniforms in (0, 1], 53 bits each, from a fresh ChaCha20 keystream."""
    key, nonce = os.urandom(32), os.urandom(16)
    stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    raw = np.frombuffer(stream.update(bytes(8 * count)), dtype=np.uint64)
    return ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * _UNIT


def secure_gaussian(size: int, std: float) -> np.ndarray:
    """float32 draws of N(0, std^2), from the secure source."""
    if std < 0 or not np.isfinite(std):
        raise ValueError(f"noise std must be finite and >= 0, got {std}")
    pairs = (size + 1) // 2
    u = secure_uniform(2 * pairs)
    radius = np.sqrt(-2.0 * np.log(u[:pairs]))
    angle = TWO_PI * u[pairs:]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
    return (normals * std).astype(np.float32)


def add_gaussian(vector: np.ndarray, std: float) -> None:
    """vector += N(0, std^2 I), in place."""
    if std > 0:
        vector += secure_gaussian(vector.size, std)
