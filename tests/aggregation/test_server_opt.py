"""Tests of the server optimizers (aggregation/server_opt.py), with numbers worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.aggregation.server_opt import (
    SERVER_OPTIMIZERS,
    ServerOptimizer,
    apply,
    init_state,
    server_sgd,
)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# The shared first step: x = [1, 0, -1], Δ = [0.1, -0.2, 0.0], lr 0.1, β1 0.9, β2 0.99, τ 1e-3.
# Starting state m = 0, v = τ² = 1e-6; Δ² = [0.01, 0.04, 0]; every m1 = 0.1·Δ = [0.01, -0.02, 0].
X0, DELTA = _f32(1, 0, -1), _f32(0.1, -0.2, 0.0)
M1 = [0.01, -0.02, 0.0]


def _opt(name: str, **kwargs: float) -> ServerOptimizer:
    return ServerOptimizer(name, lr=kwargs.pop("lr", 0.1), beta1=0.9, beta2=0.99, tau=1e-3, **kwargs)


def _step(opt: ServerOptimizer, x: np.ndarray, *deltas: np.ndarray) -> tuple[np.ndarray, tuple]:
    state = init_state(opt, x.size)
    for delta in deltas:
        x, state = apply(opt, state, x, delta)
    return x, state


# --- sgd and momentum ----------------------------------------------------------------


def test_sgd_with_lr_1_adds_the_mean_delta():
    # Execute
    x, state = _step(ServerOptimizer("sgd", lr=1.0), _f32(1, 2, 3), _f32(0.5, -1, 0.25))
    # Assert
    assert x.tolist() == [1.5, 1.0, 3.25] and state == ()


def test_sgd_with_lr_half_matches_server_sgd():
    # Prepare: [1, 1, 1] + 0.5·[2.5, 5, 7.5] = [2.25, 3.5, 4.75]
    x, delta = _f32(1, 1, 1), _f32(2.5, 5, 7.5)
    # Execute
    out, _ = apply(ServerOptimizer("sgd", lr=0.5), (), x, delta)
    # Assert
    assert out.tolist() == [2.25, 3.5, 4.75]
    assert out.tobytes() == server_sgd(x, delta, server_lr=0.5).tobytes()
    assert out.dtype == np.float32


def test_momentum_over_two_steps():
    # Prepare: lr 0.5, β 0.9, x0 = [1, 2]
    # step 1: m = [1, -1];                      x = [1, 2] + 0.5·[1, -1]     = [1.5, 1.5]
    # step 2: m = 0.9·[1, -1] + [0.5, 0.5] = [1.4, -0.4];  x = [1.5, 1.5] + 0.5·m = [2.2, 1.3]
    opt = ServerOptimizer("sgd", lr=0.5, momentum=0.9)
    # Execute
    x, (m,) = _step(opt, _f32(1, 2), _f32(1, -1), _f32(0.5, 0.5))
    # Assert
    np.testing.assert_allclose(m, [1.4, -0.4], rtol=1e-6)
    np.testing.assert_allclose(x, [2.2, 1.3], rtol=1e-6)


# --- adaptive optimizers: one step by hand ---------------------------------------------


def test_one_adam_step():
    # v1 = 0.99·1e-6 + 0.01·Δ² = [1.0099e-4, 4.0099e-4, 9.9e-7]
    # x1 = x0 + 0.1·m1/(√v1 + 1e-3):
    #   0.01/(0.01004938 + 0.001) = 0.9050283  -> 1 + 0.09050283
    #  -0.02/(0.02002473 + 0.001) = -0.9512605 -> 0 - 0.09512605
    #   m = 0                                   -> -1
    x, (m, v) = _step(_opt("adam"), X0, DELTA)
    np.testing.assert_allclose(m, M1, rtol=1e-6)
    np.testing.assert_allclose(v, [1.0099e-4, 4.0099e-4, 9.9e-7], rtol=1e-6)
    np.testing.assert_allclose(x, [1.0905028, -0.0951261, -1.0], rtol=1e-6, atol=1e-7)


def test_one_yogi_step():
    # sign(v0 - Δ²) = sign([1e-6 - 0.01, 1e-6 - 0.04, 1e-6 - 0]) = [-1, -1, +1]
    # v1 = v0 - 0.01·Δ²·sign = [1e-6 + 1e-4, 1e-6 + 4e-4, 1e-6 - 0] = [1.01e-4, 4.01e-4, 1e-6]
    # x1: 0.01/(0.01004988 + 0.001) = 0.9049876; -0.02/(0.02002498 + 0.001) = -0.9512492
    x, (m, v) = _step(_opt("yogi"), X0, DELTA)
    np.testing.assert_allclose(m, M1, rtol=1e-6)
    np.testing.assert_allclose(v, [1.01e-4, 4.01e-4, 1e-6], rtol=1e-6)
    np.testing.assert_allclose(x, [1.0904988, -0.0951249, -1.0], rtol=1e-6, atol=1e-7)


def test_one_adagrad_step():
    # v1 = v0 + Δ² = [0.010001, 0.040001, 1e-6]
    # x1: 0.01/(0.1000050 + 0.001) = 0.0990050; -0.02/(0.2000025 + 0.001) = -0.0995012
    x, (m, v) = _step(_opt("adagrad"), X0, DELTA)
    np.testing.assert_allclose(m, M1, rtol=1e-6)
    np.testing.assert_allclose(v, [0.010001, 0.040001, 1e-6], rtol=1e-6)
    np.testing.assert_allclose(x, [1.0099005, -0.0099501, -1.0], rtol=1e-6, atol=1e-7)


def test_second_yogi_step_moves_v_both_ways():
    # After step 1 (above): v1 = [1.01e-4, 4.01e-4, 1e-6], x1 = [1.0904988, -0.0951249, -1].
    # Δ2 = [0.001, -0.05, 0.002], Δ2² = [1e-6, 2.5e-3, 4e-6]
    # sign(v1 - Δ2²) = [+1, -1, -1]: v falls in the first coordinate and rises in the others.
    # v2 = [1.01e-4 - 1e-8, 4.01e-4 + 2.5e-5, 1e-6 + 4e-8] = [1.0099e-4, 4.26e-4, 1.04e-6]
    # m2 = 0.9·m1 + 0.1·Δ2 = [0.0091, -0.023, 0.0002]
    # x2 = x1 + 0.1·m2/(√v2 + 1e-3):
    #   0.0091/0.01104938 = 0.8235757; -0.023/0.02163977 = -1.0628575; 0.0002/0.00201980 = 0.0990195
    delta2 = _f32(0.001, -0.05, 0.002)
    x, (m, v) = _step(_opt("yogi"), X0, DELTA, delta2)
    np.testing.assert_allclose(m, [0.0091, -0.023, 0.0002], rtol=1e-6)
    np.testing.assert_allclose(v, [1.0099e-4, 4.26e-4, 1.04e-6], rtol=1e-6)
    np.testing.assert_allclose(x, [1.1728563, -0.2014107, -0.9900980], rtol=1e-6)


def test_yogi_and_adam_differ_after_two_steps():
    delta2 = _f32(0.001, -0.05, 0.002)
    x_adam, (_, v_adam) = _step(_opt("adam"), X0, DELTA, delta2)
    x_yogi, (_, v_yogi) = _step(_opt("yogi"), X0, DELTA, delta2)
    assert not np.allclose(v_adam, v_yogi, rtol=1e-3)
    assert not np.array_equal(x_adam, x_yogi)


# --- state and purity --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opt", "arrays"),
    [
        (ServerOptimizer("sgd", lr=1.0), 0),
        (ServerOptimizer("sgd", lr=1.0, momentum=0.9), 1),
        (ServerOptimizer("adam", lr=0.1, tau=0.01), 2),
        (ServerOptimizer("yogi", lr=0.1, tau=0.01), 2),
        (ServerOptimizer("adagrad", lr=0.1, tau=0.01), 2),
    ],
)
def test_init_state_shapes_and_values(opt, arrays):
    state = init_state(opt, 5)
    assert len(state) == arrays
    assert all(a.shape == (5,) and a.dtype == np.float32 for a in state)
    if arrays >= 1:
        assert not state[0].any()  # m = 0
    if arrays == 2:
        assert np.all(state[1] == np.float32(0.01**2))  # v = τ² exactly


@pytest.mark.parametrize("opt", [ServerOptimizer("sgd", lr=0.5, momentum=0.5)] + [_opt(n) for n in SERVER_OPTIMIZERS])
def test_apply_does_not_modify_its_inputs(opt):
    # Prepare: a state that is not the initial one
    rng = np.random.default_rng(0)
    x = rng.standard_normal(64).astype(np.float32)
    _, state = apply(opt, init_state(opt, 64), x, rng.standard_normal(64).astype(np.float32))
    delta = rng.standard_normal(64).astype(np.float32)
    before = [a.tobytes() for a in (x, delta, *state)]
    # Execute
    new_x, new_state = apply(opt, state, x, delta)
    # Assert
    assert [a.tobytes() for a in (x, delta, *state)] == before
    assert new_x.dtype == np.float32 and all(a.dtype == np.float32 for a in new_state)
    assert not any(np.shares_memory(new, old) for new in (new_x, *new_state) for old in (x, delta, *state))


def test_same_inputs_give_identical_results():
    delta2 = _f32(0.001, -0.05, 0.002)
    first = _step(_opt("yogi"), X0, DELTA, delta2)
    again = _step(_opt("yogi"), X0, DELTA, delta2)
    assert first[0].tobytes() == again[0].tobytes()


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "fedavg"}, "name"),
        ({"name": "Adam"}, "name"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"lr": True}, "lr"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": 1.0}, "momentum"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta1": -0.5}, "beta1"),
        ({"beta2": 0.0}, "beta2"),
        ({"beta2": 1.0}, "beta2"),
        ({"tau": 0.0}, "tau"),
        ({"tau": -1e-3}, "tau"),
        ({"tau": float("nan")}, "tau"),
    ],
)
def test_invalid_settings_raise_naming_the_field(kwargs, field):
    settings = {"name": "adam", "lr": 0.1} | kwargs
    with pytest.raises(ValueError, match=field):
        ServerOptimizer(**settings)


def test_init_state_refuses_a_negative_or_non_integer_size():
    for size in (-1, 2.0, True):
        with pytest.raises(ValueError, match="size"):
            init_state(_opt("adam"), size)


@pytest.mark.parametrize(
    ("make_case", "match"),
    [
        (lambda s: (s, X0, _f32(1, 2)), "shape"),
        (lambda s: (s, X0, DELTA.astype(np.float64)), "float32"),
        (lambda s: (s, X0.astype(np.float64), DELTA), "float32"),
        (lambda s: (s, X0.reshape(1, 3), DELTA.reshape(1, 3)), "1-D"),
        (lambda s: (s[:1], X0, DELTA), "state"),
        (lambda s: ((), X0, DELTA), "state"),
        (lambda s: ((s[0], s[1][:2]), X0, DELTA), "shape"),
        (lambda s: ((s[0], s[1].astype(np.float64)), X0, DELTA), "float32"),
    ],
    ids=["delta-shape", "delta-dtype", "global-dtype", "2-D", "short-state", "empty-state", "v-shape", "v-dtype"],
)
def test_apply_refuses_bad_inputs_and_leaves_them_unchanged(make_case, match):
    # Prepare
    opt = _opt("adam")
    state, x, delta = make_case(init_state(opt, 3))
    before = [a.tobytes() for a in (x, delta, *state)]
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        apply(opt, state, x, delta)
    assert [a.tobytes() for a in (x, delta, *state)] == before


def test_sgd_with_momentum_refuses_the_plain_sgd_state():
    with pytest.raises(ValueError, match="state"):
        apply(ServerOptimizer("sgd", lr=1.0, momentum=0.9), (), X0, DELTA)


def test_server_sgd_still_checks_shapes():
    with pytest.raises(ValueError, match="shape"):
        server_sgd(X0, _f32(1, 2), server_lr=1.0)
