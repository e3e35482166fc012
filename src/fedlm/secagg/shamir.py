"""t-of-n Shamir secret sharing (Shamir, CACM 1979) of 32-byte secrets over GF(2^521 - 1).

SecAgg+ shares each client's mask seed and masking key with its neighbours. We write our
own instead of using pycryptodome's `Crypto.Protocol.SecretSharing.Shamir` because that
one shares 16-byte secrets over GF(2^128) with bit-by-bit multiplication in pure Python,
about a hundred times slower than Python's integers modulo a Mersenne prime; a round with
50 clients needs ~5,000 shares. The field holds any 32-byte secret (the Mersenne prime
2^521 - 1 is larger than 2^256); coefficients come from `secrets` (os.urandom).
Reconstruction is Lagrange interpolation at zero; the tests check it against exact
rational interpolation and that fewer than t shares say nothing about the secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # 521 bits
SECRET_BYTES = 32


def split(secret: bytes, *, threshold: int, points: Sequence[int]) -> list[int]:
    """Shares of `secret`, one per x in `points` (distinct, 1..PRIME-1); any `threshold` recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a shared secret is {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} must be between 1 and the number of shares {len(points)}")
    if len(set(points)) != len(points) or not all(0 < x < PRIME for x in points):
        raise ValueError("share points must be distinct and nonzero")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [_evaluate(coefficients, x) for x in points]


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):  # Horner
        value = (value * x + c) % PRIME
    return value


def lagrange_at_zero(points: Sequence[int]) -> list[int]:
    """Weights w_i with f(0) = sum w_i f(x_i) for any polynomial of degree < len(points).

    w_i = prod_{j != i} x_j / (x_j - x_i); the denominators are inverted together with one
    modular inversion (Montgomery's trick), the costly step at 521 bits.
    """
    numerators, denominators = [], []
    for i, xi in enumerate(points):
        numerator, denominator = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        numerators.append(numerator)
        denominators.append(denominator)
    return [n * inverse % PRIME for n, inverse in zip(numerators, _batch_inverse(denominators))]


def _batch_inverse(values: list[int]) -> list[int]:
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    result = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        result[i] = prefix[i] * inverse % PRIME
        inverse = inverse * values[i] % PRIME
    return result


def combine(shares: dict[int, int], *, threshold: int, weights: list[int] | None = None) -> bytes:
    """The secret from at least `threshold` shares {x: share}; uses the first `threshold` of them.

    `weights` (from lagrange_at_zero over the same first points) skips recomputing them when
    many secrets were shared at the same points.
    """
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares cannot recover a secret that needs {threshold}")
    points = sorted(shares)[:threshold]
    weights = weights or lagrange_at_zero(points)
    value = sum(w * shares[x] for w, x in zip(weights, points)) % PRIME
    if value >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares are inconsistent: they interpolate to no 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")


def encode_share(share: int) -> bytes:
    return share.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, not {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("a share must be below the field's prime")
    return value
