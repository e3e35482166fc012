"""LoRA aggregation modes: svd and ffa give exactly the weighted mean of B.A; fedit does not."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.aggregation.lora_modes import factor_weighted_sum, lora_pairs, product, svd_aggregate
from fedlm.core.types import Update
from fedlm.core.vectors import flatten, make_spec
from fedlm.server.rounds import accept_update, close_round, initial_state, open_round

OUT, IN, R = 5, 4, 4
SPEC = make_spec([("l.lora_A.w", (R, IN)), ("l.lora_B.w", (OUT, R))])
KEY = "l.lora_A.w"


def factors(rng, rank):
    """A client's factors of rank `rank`, zero-padded to R (HetLoRA-style)."""
    a, b = np.zeros((R, IN), np.float32), np.zeros((OUT, R), np.float32)
    a[:rank] = rng.normal(size=(rank, IN))
    b[:, :rank] = rng.normal(size=(OUT, rank))
    return flatten(SPEC, {"l.lora_A.w": a, "l.lora_B.w": b})


def test_svd_gives_exactly_the_weighted_mean_with_heterogeneous_ranks():
    # Prepare: global 0 (rank 0), clients of rank 1, 1 and 2: ranks sum to R, so no truncation.
    rng = np.random.default_rng(0)
    global_vector = np.zeros(SPEC.size, np.float32)
    clients = [factors(rng, k) for k in (1, 1, 2)]
    weights = np.array([1.0, 2.0, 5.0])
    deltas = np.stack([c - global_vector for c in clients])
    expected = sum(w * product(SPEC, c)[KEY] for w, c in zip(weights, clients, strict=True)) / weights.sum()
    # Execute
    new_global = svd_aggregate(SPEC, global_vector, deltas, weights, rank=R)
    # Assert
    np.testing.assert_allclose(product(SPEC, new_global)[KEY], expected, atol=1e-5)


def test_svd_with_a_nonzero_global_and_server_lr_moves_along_the_mean_of_delta_w():
    # Prepare: W0 of rank 1 and two rank-1 clients; server_lr 0.5 -> W0 + 0.5 (mean W_i - W0).
    rng = np.random.default_rng(1)
    global_vector = factors(rng, 1)
    clients = [factors(rng, 1), factors(rng, 1)]
    weights = np.array([3.0, 1.0])
    w0 = product(SPEC, global_vector)[KEY]
    mean_w = (3 * product(SPEC, clients[0])[KEY] + product(SPEC, clients[1])[KEY]) / 4
    # Execute
    new_global = svd_aggregate(SPEC, global_vector, np.stack(clients) - global_vector, weights, rank=R, server_lr=0.5)
    # Assert
    np.testing.assert_allclose(product(SPEC, new_global)[KEY], w0 + 0.5 * (mean_w - w0), atol=1e-5)


def test_svd_truncation_is_the_best_rank_r_approximation():
    # Prepare: three full-rank clients; the mean has rank 4 but we keep rank 2.
    rng = np.random.default_rng(2)
    bs = [rng.normal(size=(OUT, R)) for _ in range(3)]
    as_ = [rng.normal(size=(R, IN)) for _ in range(3)]
    weights = np.array([0.2, 0.3, 0.5])
    mean = sum(w * b @ a for w, b, a in zip(weights, bs, as_, strict=True))
    s = np.linalg.svd(mean, compute_uv=False)
    # Execute
    new_b, new_a = factor_weighted_sum(bs, as_, weights, rank=2)
    # Assert: Eckart-Young: the Frobenius error is the norm of the dropped singular values.
    error = np.linalg.norm(new_b.astype(np.float64) @ new_a - mean)
    assert error == pytest.approx(np.sqrt(np.sum(s[2:] ** 2)), rel=1e-4)
    # balanced factors: B' = U sqrt(S), A' = sqrt(S) V^T, so both carry the same column/row norms
    np.testing.assert_allclose(np.linalg.norm(new_b, axis=0), np.linalg.norm(new_a, axis=1), rtol=1e-4)


def fedavg_round(global_vector, client_vectors, weights):
    """One plain FedAvg round through the round engine (what fedit and ffa use)."""
    state = initial_state(global_vector)
    names = tuple(f"c{i}" for i in range(len(client_vectors)))
    rnd = open_round(state, names)
    for name, vector, w in zip(names, client_vectors, weights, strict=True):
        accept_update(rnd, Update(rnd.round, rnd.version, name, int(w), vector - global_vector))
    return close_round(state, rnd)[0].global_vector


def test_fedit_round_is_not_the_mean_of_products():
    # Prepare: two clients that trained both factors from a zero global
    rng = np.random.default_rng(3)
    global_vector = np.zeros(SPEC.size, np.float32)
    clients = [factors(rng, R) for _ in range(2)]
    # Execute
    new_global = fedavg_round(global_vector, clients, [1, 1])
    # Assert: B.A of the averaged factors misses the mean of the clients' B.A by far
    exact = (product(SPEC, clients[0])[KEY] + product(SPEC, clients[1])[KEY]) / 2
    gap = np.linalg.norm(product(SPEC, new_global)[KEY] - exact) / np.linalg.norm(exact)
    assert gap > 0.1


def test_ffa_round_with_a_shared_frozen_a_is_exact():
    # Prepare: every client holds the global A (frozen); only B differs
    rng = np.random.default_rng(4)
    global_vector = factors(rng, R)
    a_slice = slice(0, R * IN)
    clients = []
    for _ in range(3):
        c = factors(rng, R)
        c[a_slice] = global_vector[a_slice]
        clients.append(c)
    weights = [1, 2, 3]
    # Execute
    new_global = fedavg_round(global_vector, clients, weights)
    # Assert: the new global's B.A is exactly the weighted mean of the clients' B.A
    exact = sum(w * product(SPEC, c)[KEY] for w, c in zip(weights, clients, strict=True)) / sum(weights)
    np.testing.assert_allclose(product(SPEC, new_global)[KEY], exact, atol=1e-5)


def test_inputs_are_not_modified_and_bad_inputs_are_refused():
    rng = np.random.default_rng(5)
    global_vector = factors(rng, 1)
    deltas = np.stack([factors(rng, 1)])
    before = (global_vector.tobytes(), deltas.tobytes())
    svd_aggregate(SPEC, global_vector, deltas, np.array([1.0]), rank=R)
    assert (global_vector.tobytes(), deltas.tobytes()) == before
    with pytest.raises(ValueError, match="one weight per client"):
        svd_aggregate(SPEC, global_vector, deltas, np.array([1.0, 2.0]), rank=R)
    with pytest.raises(ValueError, match="unpaired"):
        lora_pairs(make_spec([("x.lora_A.w", (2, 2)), ("x.lora_B.w", (2, 2)), ("bias", (2,))]))
