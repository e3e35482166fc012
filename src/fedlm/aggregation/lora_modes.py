"""LoRA-aware aggregation: the exact weighted mean of the clients' B.A, refactored to rank r.

Averaging A and B separately (FedIT; Zhang et al. 2024, arXiv:2305.05644) is inexact:
the mean of products is not the product of means. Two exact alternatives:
- FFA-LoRA (Sun et al., ICLR 2024, arXiv:2403.12313) freezes A from a seed shared by
  every client and trains only B, which makes B.A linear in B: plain averaging is exact.
  That needs no server code; `models.lora` freezes A.
- Here: the server forms the weighted mean of each client's W_i = B_i.A_i per layer and
  factors it back with a truncated SVD (the best rank-r approximation, Eckart-Young).
  Clients may train different ranks (zero-padded to r, as in HetLoRA, Cho et al. 2024);
  when the ranks sum to at most r the result is exact.

The products are never formed at full size: stacking the factors, W = [B_1..B_n] D [A_1;..;A_n],
so two thin QR decompositions and an SVD of an (n r) x (n r) core give the factors.
"""

from __future__ import annotations

import numpy as np

from fedlm.core.vectors import Entry, Spec


def lora_pairs(spec: Spec) -> list[tuple[Entry, Entry]]:
    """(A, B) entries of each LoRA module in the spec; every entry must belong to a pair."""
    by_name = {e.name: e for e in spec.entries}
    pairs = []
    for e in spec.entries:
        if "lora_A" in e.name:
            b = by_name.get(e.name.replace("lora_A", "lora_B"))
            if b is None or b.shape[1] != e.shape[0]:
                raise ValueError(f"LoRA factor {e.name} has no matching lora_B of rank {e.shape[0]}")
            pairs.append((e, b))
    paired = {n for a, b in pairs for n in (a.name, b.name)}
    unpaired = [n for n in spec.names if n not in paired]
    if unpaired:
        raise ValueError(f"svd aggregation needs both LoRA factors shared; unpaired: {unpaired[:3]}")
    return pairs


def factor_weighted_sum(bs: list[np.ndarray], as_: list[np.ndarray], weights: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-`rank` factors (B', A') of sum_i w_i B_i A_i, balanced as U sqrt(S) and sqrt(S) V^T."""
    b_cat = np.concatenate(bs, axis=1).astype(np.float64)  # [out, n r]
    a_cat = np.concatenate(as_, axis=0).astype(np.float64)  # [n r, in]
    scale = np.repeat(weights, [b.shape[1] for b in bs])  # the diagonal D
    qb, rb = np.linalg.qr(b_cat)  # [out, k], [k, n r]
    qa, ra = np.linalg.qr(a_cat.T)  # [in, k'], [k', n r]
    core = (rb * scale) @ ra.T  # [k, k']
    u, s, vt = np.linalg.svd(core, full_matrices=False)
    k = min(rank, s.size)
    root = np.sqrt(s[:k])
    new_b = np.zeros((b_cat.shape[0], rank))
    new_a = np.zeros((rank, a_cat.shape[1]))
    new_b[:, :k] = (qb @ u[:, :k]) * root
    new_a[:k] = root[:, None] * (vt[:k] @ qa.T)
    return new_b.astype(np.float32), new_a.astype(np.float32)


def svd_aggregate(
    spec: Spec, global_vector: np.ndarray, deltas: np.ndarray, weights: np.ndarray, *, rank: int, server_lr: float = 1.0
) -> np.ndarray:
    """The next global vector: per layer, factors of W0 + server_lr * (mean_w(B_i A_i) - W0).

    `deltas` is [n, P], each client's new factors minus the global; `weights` [n] sum to
    anything positive. Returns a new float32 vector; the inputs are not modified.
    """
    if deltas.ndim != 2 or deltas.shape[1] != global_vector.size or len(weights) != deltas.shape[0]:
        raise ValueError("deltas must be [clients, P] with one weight per client")
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights, dtype=np.float64))
    out = np.empty_like(global_vector)
    for a_entry, b_entry in lora_pairs(spec):
        a0 = global_vector[a_entry.offset : a_entry.stop].reshape(a_entry.shape)
        b0 = global_vector[b_entry.offset : b_entry.stop].reshape(b_entry.shape)
        a_i = [a0 + d[a_entry.offset : a_entry.stop].reshape(a_entry.shape) for d in deltas]
        b_i = [b0 + d[b_entry.offset : b_entry.stop].reshape(b_entry.shape) for d in deltas]
        # W0 + lr (sum w_i W_i - W0) = (1 - lr) W0 + sum lr w_i W_i: one more weighted term.
        terms_w = np.concatenate([[1.0 - server_lr], server_lr * w])
        new_b, new_a = factor_weighted_sum([b0, *b_i], [a0, *a_i], terms_w, rank)
        out[a_entry.offset : a_entry.stop] = new_a.reshape(-1)
        out[b_entry.offset : b_entry.stop] = new_b.reshape(-1)
    return out


def product(spec: Spec, vector: np.ndarray) -> dict[str, np.ndarray]:
    """B.A per LoRA module (keyed by the A entry's name), in float64: what the model adds to W."""
    result = {}
    for a_entry, b_entry in lora_pairs(spec):
        a = vector[a_entry.offset : a_entry.stop].reshape(a_entry.shape).astype(np.float64)
        b = vector[b_entry.offset : b_entry.stop].reshape(b_entry.shape).astype(np.float64)
        result[a_entry.name] = b @ a
    return result
