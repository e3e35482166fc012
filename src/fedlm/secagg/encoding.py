"""Floats to integers mod 2^32 and back: the inputs SecAgg masks and sums.

Each value is clipped to [-bound, bound], scaled and stochastically rounded (floor(x s + u),
u uniform in [0, 1): unbiased, E[q] = x s), then stored in two's complement. The scale is
shared by the whole cohort and leaves headroom for the sum of `clients` inputs to fit in a
signed 32-bit integer, so the sum mod 2^32 decodes exactly to the sum of the rounded inputs
(after Bonawitz et al. 2017, Section 3, and the fixed-point encoding of TFF's secure sum).

With a `step`, the inputs already lie on the cohort's shared quantization grid
(updates.dp_quantize, after Kairouz et al. 2021, arXiv:2102.06387): each value is sent as
its grid code, rounded to the nearest integer (exact: a float32 code * step is within
2^-24 relative of the code), and the sum decodes to (sum of the codes) * step. Nothing is
added to the update, so its norm, and the DP sensitivity, are those the quantizer bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT_RANGE = 2**31 - 1


@dataclass(frozen=True)
class FixedPoint:
    """The cohort's shared encoding: |value| <= bound, at most `clients` inputs summed."""

    bound: float
    clients: int
    step: float = 0.0  # > 0: the inputs lie on a shared grid of this spacing and are sent as their codes

    def __post_init__(self) -> None:
        if not (self.bound > 0 and np.isfinite(self.bound)):
            raise ValueError(f"the encoding bound must be a positive finite number, not {self.bound}")
        if not 1 <= self.clients < INT_RANGE // 2:
            raise ValueError(f"cannot encode a sum of {self.clients} inputs")
        if not (self.step >= 0 and np.isfinite(self.step)):
            raise ValueError(f"the grid step must be a finite number >= 0 (0 = no grid), not {self.step}")
        if self.step and self.clients * (self.bound / self.step + 1) > INT_RANGE:
            raise ValueError(f"codes up to {self.bound / self.step:.3g} from {self.clients} inputs overflow 32 bits")

    @property
    def scale(self) -> float:
        if self.step:
            return 1.0 / self.step
        # each |q| <= bound*scale + 1, so clients * |q| <= INT_RANGE
        return (INT_RANGE - self.clients) / (self.clients * self.bound)

    def encode(self, values: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        """Integers of `values` into the uint32 array `out`: stochastically rounded, or their grid codes."""
        scaled = np.clip(values, -self.bound, self.bound).astype(np.float64)
        if self.step:
            scaled /= self.step
            np.rint(scaled, out=scaled)  # values on the grid: their codes, exactly
        else:
            scaled *= self.scale
            scaled += rng.random(values.size)
            np.floor(scaled, out=scaled)
        out[:] = scaled.astype(np.int64).astype(np.uint32)  # two's complement mod 2^32
        return out

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """The float32 sum of the inputs from their integer sum mod 2^32."""
        signed = total.view(np.int32).astype(np.float64)
        return (signed * self.step if self.step else signed / self.scale).astype(np.float32)
