"""A count sketch of each update, taken as it arrives, so cosines between updates need no copy of any update.

Count sketch (Charikar, Chen & Farach-Colton 2002, "Finding Frequent Items in Data Streams"):
coordinate i of a P-vector is multiplied by a random sign s_i and added into bucket h(i) of a
k-vector; for two vectors, <Su, Sv> is an unbiased estimate of <u, v> with variance about
(|u|^2 |v|^2 + <u, v>^2) / k, the Johnson-Lindenstrauss guarantee that feature hashing gives
inner products (Weinberger et al. 2009, arXiv:0902.2206). A cosine between sketches is off by
about (1 - cos^2) / sqrt(k): at k = 2039, at most about 0.02 (one standard deviation).

Here h(i) = i mod k, with k prime, instead of a hashed bucket: one strided pass with no index
array and no float64 copy (measured here for a 1M-coordinate update: 0.6 ms, against 2.1 ms for
numpy's bincount over hashed buckets and 0.14 ms for the update's own dot product). The
random signs alone keep the estimate unbiased for any layout; its variance matches a hashed
sketch unless the update's energy sits on a few residues mod k, which a prime k keeps LoRA
layouts (rows of powers of two) away from. A vector of at most k coordinates is sketched exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedlm.core.rng import make_rng

SKETCH_WIDTH = 2039  # buckets per sketch (prime): 8 KiB per client of a round


@dataclass(frozen=True)
class Sketcher:
    """The sketch signs (one per update coordinate; from the run seed in the simulation, from a secret of the process in
    the service, so that clients cannot know them) and a scratch vector to sketch through."""

    signs: np.ndarray = field(repr=False)  # float32 +-1, [P]
    scratch: np.ndarray = field(repr=False)  # float32, [P]
    width: int = SKETCH_WIDTH


def make_sketcher(size: int, seed: int, width: int = SKETCH_WIDTH) -> Sketcher:
    """The signs for updates of `size` coordinates, drawn from (seed, "monitoring-sketch")."""
    if size < 1 or width < 1:
        raise ValueError(f"a sketch needs a positive update size and width, got {size} and {width}")
    bits = make_rng(seed, "monitoring-sketch").integers(0, 2, size, dtype=np.int8)
    signs = (2 * bits - 1).astype(np.float32)
    return Sketcher(signs, np.empty(size, np.float32), width)


def sketch_into(sketcher: Sketcher, vector: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the count sketch of `vector` into `out` ([width] float32): bucket b sums s_i * v_i over i = b mod width."""
    if vector.shape != sketcher.signs.shape or out.shape != (sketcher.width,):
        raise ValueError(f"sketch shapes: vector {vector.shape} for signs {sketcher.signs.shape}, out {out.shape}")
    signed = np.multiply(vector, sketcher.signs, out=sketcher.scratch)
    width = sketcher.width
    full = (signed.size // width) * width
    if full:
        np.sum(signed[:full].reshape(-1, width), axis=0, out=out)  # [P // width, width] -> [width]
    else:
        out[:] = 0.0
    tail = signed.size - full
    out[:tail] += signed[full:]
    return out


def cosines_to_others(rows: np.ndarray) -> np.ndarray:
    """Each row's cosine to the sum of the other rows' unit directions ([n, k] -> [n]; NaN where undefined).

    Leave-one-out, so a client is not compared with itself (in a cohort of three it would be a
    third of the reference); unit directions, so one update scaled up a hundredfold cannot drag
    the reference toward itself and make the honest clients look opposed. Exact for full
    vectors; on sketches, the estimate the module docstring bounds. A zero row has no direction.
    """
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    units = rows.astype(np.float64) / safe[:, None]  # [n, k], zero rows stay zero
    total = units.sum(axis=0)
    along = units @ total  # u_i . T
    self_sq = (norms > 0).astype(np.float64)  # |u_i|^2: 1, or 0 for a zero row
    others_sq = float(total @ total) - 2.0 * along + self_sq  # |T - u_i|^2
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = (along - self_sq) / np.sqrt(np.maximum(others_sq, 0.0))
    return np.where((norms > 0) & (others_sq > 1e-12), cosines, np.nan)
