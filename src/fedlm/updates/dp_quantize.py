"""Quantization that keeps differential privacy's sensitivity: one grid for the cohort, and
rounding that never takes an update past the clip norm.

Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation" (arXiv:2102.06387), Section 4 and Theorem 1: scale onto
a grid shared by every client, then *conditional randomized rounding*: round each
coordinate up with probability equal to its fractional part (unbiased), and re-draw the
whole rounding while the rounded vector's norm is past a bound.

Why the per-chunk quantizer (updates.quantize) cannot be used with DP: its scale is the
client's own max |x|, so (1) stochastic rounding can raise the norm past the clip norm C
the Gaussian noise is calibrated to, (2) the scale is a number about that one update,
and (3) codes on different clients' grids do not sum, so SecAgg cannot carry them.

The grid here. Code k stands for k * step; |k| <= L = 2**(bits-1) - 1; the largest code
stands for `scale` = spread * C / sqrt(d) for the d quantized values (after the Hadamard
rotation of updates.rotate, which makes every coordinate about ||x|| / sqrt(d), `spread`
is how many such standard deviations the grid covers). Server and clients derive the same
float32 scale from (C, bits, d, spread), so nothing about one update sets it, the codes of
a cohort sum as integers, and the wire carries it only to be checked.

The norm bound, exactly C (no slack). Theorem 1 of Kairouz et al.: randomized rounding of
a vector of norm <= c onto step * Z^d has, with probability >= 1 - beta,
    norm**2 <= min{(c + step sqrt(d))**2,
                   c**2 + step**2 d / 4 + sqrt(2 log(1/beta)) step (c + step sqrt(d) / 2)}.
`rounding_norm` inverts it: the largest c whose bound is <= C (times 1 - 1e-5, room for
float32 decoding). The client scales its clipped update down to c (for 8 bits and the
default spread, by well under 1 %), clips coordinates to the grid's range (which only
lowers the norm), rounds, and checks the norm of the vector exactly as the server will
decode it (float32, unrotated) against C. A draw past C (probability <= beta) is re-drawn
with the same seeded generator, at most RETRIES times; then the rounding goes toward zero,
which cannot raise any coordinate, so the norm stays <= c < C. Every decoded update
therefore has norm <= C, which is all the Gaussian mechanism's sensitivity needs: the
accountant's C still holds after encoding, and the server's clip check passes untouched.

Bias: unbiased given the scaled-down vector, except for the rejected draws (probability
<= beta each) and any coordinate past the grid's range; rotate = true makes the latter
rare (a Gaussian coordinate past 6 standard deviations: about 2e-9).

Placements. Central (the server adds N(0, (z C)**2) after the sum): each decoded update
is a randomized function of one client's data with norm <= C, so the sum's add/remove
sensitivity is C, as accounted. Distributed (each client adds its share first) is not
supported with quantization: the share would be rounded with the update, so the sum no
longer carries the continuous Gaussian the accountant counts; doing it right means
integer noise added after rounding (the distributed discrete Gaussian or Skellam) and its
own accounting, which fedlm does not have. `build` refuses the combination.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedlm.updates.quantize import Quantized, dequantize, levels, pack_int4

# beta: a draw's chance of landing past the bound, by Theorem 1 (the true chance is far lower)
FAILURE_PER_DRAW = 1e-3
RETRIES = 8  # draws before rounding toward zero
FLOAT_MARGIN = 1e-5  # rounding_norm <= C (1 - this): float32 decoding cannot carry toward zero past C


def sensitivity_bound(norm: float, *, step: float, count: int, beta: float = FAILURE_PER_DRAW) -> float:
    """Kairouz et al. 2021, Theorem 1: with probability >= 1 - beta, randomized rounding of a vector
    of L2 norm <= `norm` onto step * Z^count has norm <= this."""
    root = math.sqrt(count)
    always = norm + step * root
    likely = norm**2 + step**2 * count / 4 + math.sqrt(2 * math.log(1 / beta)) * step * (norm + step * root / 2)
    return min(always, math.sqrt(likely))


def rounding_norm(clip_norm: float, *, step: float, count: int, beta: float = FAILURE_PER_DRAW) -> float:
    """The largest norm c whose rounding stays within `clip_norm` by Theorem 1 (c <= clip_norm (1 - FLOAT_MARGIN));
    <= 0 when the grid is too coarse for any."""
    root, tail = math.sqrt(count), math.sqrt(2 * math.log(1 / beta))
    always = clip_norm - step * root  # (c + step sqrt(d)) <= C
    # c**2 + tail step c + (step**2 d / 4 + tail step**2 sqrt(d) / 2 - C**2) <= 0
    b, k = tail * step, step**2 * count / 4 + tail * step**2 * root / 2 - clip_norm**2
    likely = (-b + math.sqrt(b * b - 4 * k)) / 2 if b * b >= 4 * k else -math.inf
    return min(max(always, likely), clip_norm * (1 - FLOAT_MARGIN))


@dataclass(frozen=True)
class SharedGrid:
    """The cohort's grid for `count` values: code k stands for k * step, |k| <= levels."""

    bits: int
    clip_norm: float
    count: int  # values quantized (the rotation's padded length when rotated)
    spread: float  # the largest code stands for spread * clip_norm / sqrt(count)

    def __post_init__(self) -> None:
        levels(self.bits)
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ValueError(f"a shared grid needs a clip norm > 0, got {self.clip_norm}")
        if self.count < 1:
            raise ValueError(f"a shared grid needs at least one value, got {self.count}")
        if not (self.spread > 0 and math.isfinite(self.spread)):
            raise ValueError(f"the grid's spread must be a positive finite number, got {self.spread}")
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"the grid's scale {self.scale} is not a positive float32 for clip norm {self.clip_norm}")
        if self.rounding_norm <= 0:
            raise ValueError(
                f"a {self.bits}-bit grid covering {self.spread:g} x clip_norm / sqrt({self.count}) is too coarse: its "
                f"rounding alone can reach the clip norm {self.clip_norm:g}; lower compression.shared_range or use 8 bits")

    @property
    def levels(self) -> int:
        return levels(self.bits)

    @property
    def scale(self) -> np.float32:
        """What the largest code stands for, as the wire carries it."""
        return np.float32(self.spread * self.clip_norm / math.sqrt(self.count))

    @property
    def step(self) -> np.float32:
        """The grid's spacing, computed as quantize.dequantize computes it, so both sides decode the same bits."""
        return self.scale / np.float32(self.levels)

    @property
    def rounding_norm(self) -> float:
        return rounding_norm(self.clip_norm, step=float(self.step), count=self.count)


def on_grid(codes: np.ndarray, grid: SharedGrid) -> Quantized:
    """int codes in [-L, L] as a Quantized with the grid's one scale (chunk = count)."""
    small = codes.astype(np.int8)
    packed = small if grid.bits == 8 else pack_int4(small)
    return Quantized(packed, np.array([grid.scale], np.float32), grid.count, grid.bits, grid.count)


def is_on_grid(q: Quantized, grid: SharedGrid) -> bool:
    """True when `q` was quantized on exactly this grid: same bits, one chunk, the same float32 scale."""
    return (q.bits, q.size, q.chunk) == (grid.bits, grid.count, grid.count) and bool(q.scales[0] == grid.scale)


def randomized_round(units: np.ndarray, rng: np.random.Generator, top: int) -> np.ndarray:
    """Each value to its floor or ceiling, up with probability equal to its fractional part (unbiased);
    the clip to [-top, top] only catches float rounding just past the range, and lowers the norm."""
    low = np.floor(units)
    codes = low + (rng.random(units.size) < units - low)
    return np.clip(codes, -top, top)


def within(decoded: np.ndarray, clip_norm: float) -> bool:
    return float(np.linalg.norm(decoded.astype(np.float64))) <= clip_norm


def quantize_shared(vector: np.ndarray, grid: SharedGrid, rng: np.random.Generator, *,
                    decode: Callable[[Quantized], np.ndarray] = dequantize,
                    retries: int = RETRIES) -> tuple[Quantized, np.ndarray]:
    """Conditional randomized rounding of `vector` onto `grid`: the codes, and `decode(codes)` (the float32
    vector the server will decode), whose norm is <= grid.clip_norm whatever the input."""
    if vector.ndim != 1 or vector.size != grid.count:
        raise ValueError(f"the grid holds {grid.count} values, got shape {vector.shape}")
    work = vector.astype(np.float64)
    norm = float(np.linalg.norm(work))
    if not math.isfinite(norm):
        raise ValueError("cannot quantize a vector with inf or nan values")
    if norm > grid.rounding_norm:
        work *= grid.rounding_norm / norm
    np.clip(work, -float(grid.scale), float(grid.scale), out=work)  # lowers the norm; rare after rotation
    units = work / float(grid.step)  # in grid units: code k stands for k * step
    for _ in range(retries):
        q = on_grid(randomized_round(units, rng, grid.levels), grid)
        decoded = decode(q)
        if within(decoded, grid.clip_norm):
            return q, decoded
    q = on_grid(np.clip(np.trunc(units), -grid.levels, grid.levels), grid)  # toward zero: no coordinate grows
    decoded = decode(q)
    if not within(decoded, grid.clip_norm):  # cannot happen: the norm is <= rounding_norm < clip_norm
        raise ArithmeticError("rounding toward zero left the update past the clip norm")
    return q, decoded
