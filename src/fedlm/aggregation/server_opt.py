"""Server optimizers: turn the mean client delta into the next global vector.

Reddi et al. 2021, "Adaptive Federated Optimization", arXiv:2003.00295, Algorithm 2
(FedAdagrad, FedAdam, FedYogi); FedAvg with server momentum (FedAvgM) from Hsu et al.
2019, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", arXiv:1909.06335. As in fedjax, each is FedAvg with a different
server step, written as two pure functions over explicit state: `init_state` and
`apply`. The mean delta Δ is the negated pseudo-gradient, so every step adds to x.

    sgd      x + lr·Δ                        (momentum 0; state ())
    sgd, β   m = β·m + Δ;  x + lr·m          (heavy ball; state (m,))
    adam     m = β1·m + (1−β1)·Δ;  v = β2·v + (1−β2)·Δ²
    yogi     m as adam;            v = v − (1−β2)·Δ²·sign(v − Δ²)
    adagrad  m as adam;            v = v + Δ²
    adaptive ones then step x + lr·m / (√v + τ)   (state (m, v))

Initial state: m = 0 and v = τ² exactly (the paper asks only v₋₁ ≥ τ²). There is no
bias correction, as in the paper's Algorithm 2: early steps of adam are damped by
(1 − β1) and the small starting v, not rescaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")

# (m,) for sgd with momentum, (m, v) for the adaptive ones, () for plain sgd.
OptState = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class ServerOptimizer:
    """Which server step to take and its hyperparameters, checked on construction."""

    name: str
    lr: float
    momentum: float = 0.0  # sgd only (FedAvgM); the adaptive optimizers ignore it
    beta1: float = 0.9  # first moment of adam, yogi and adagrad
    beta2: float = 0.99  # second moment of adam and yogi
    tau: float = 1e-3  # adaptivity: the floor of the denominator

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ValueError(f"name must be one of {SERVER_OPTIMIZERS}, got {self.name!r}")
        _check_real("lr", self.lr, lambda x: x > 0, "> 0")
        _check_real("momentum", self.momentum, lambda x: 0 <= x < 1, "in [0, 1)")
        _check_real("beta1", self.beta1, lambda x: 0 <= x < 1, "in [0, 1)")
        _check_real("beta2", self.beta2, lambda x: 0 < x < 1, "in (0, 1)")
        _check_real("tau", self.tau, lambda x: x > 0, "> 0")

    @property
    def is_adaptive(self) -> bool:
        return self.name != "sgd"


def _check_real(field: str, value: object, ok: Callable[[float], bool], expected: str) -> None:
    is_real = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    if not is_real or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{field} must be a finite number {expected}, got {value!r}")


def _state_len(opt: ServerOptimizer) -> int:
    if opt.is_adaptive:
        return 2
    return 1 if opt.momentum > 0 else 0


def init_state(opt: ServerOptimizer, size: int) -> OptState:
    """The state before the first round: m = 0 and, for adaptive optimizers, v = τ²."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"size must be a non-negative integer, got {size!r}")
    if opt.is_adaptive:
        return np.zeros(size, np.float32), np.full(size, opt.tau**2, np.float32)
    return (np.zeros(size, np.float32),) if opt.momentum > 0 else ()


def _check_vector(name: str, array: object, shape: tuple[int, ...] | None) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D float32 numpy array")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} shape {array.shape} differs from the global {shape}")


def apply(
    opt: ServerOptimizer, state: OptState, global_vector: np.ndarray, mean_delta: np.ndarray
) -> tuple[np.ndarray, OptState]:
    """One server step: (new global, new state). Inputs, state included, are not modified.

    Everything is float32. Only shapes and dtypes are checked here: the round engine
    has already refused non-finite updates, and the check would cost a pass over P.
    """
    _check_vector("global vector", global_vector, None)
    _check_vector("mean delta", mean_delta, global_vector.shape)
    if not isinstance(state, tuple) or len(state) != _state_len(opt):
        kind = opt.name if opt.is_adaptive else f"sgd with momentum {opt.momentum}"
        got = len(state) if isinstance(state, tuple) else type(state).__name__
        raise ValueError(f"{kind} expects a state of {_state_len(opt)} arrays, got {got}")
    for i, array in enumerate(state):
        _check_vector(f"state[{i}]", array, global_vector.shape)

    lr = np.float32(opt.lr)
    if not state:
        return server_sgd(global_vector, mean_delta, server_lr=opt.lr), ()
    if not opt.is_adaptive:
        m = state[0] * np.float32(opt.momentum)
        m += mean_delta
        new_global = m * lr
        new_global += global_vector
        return new_global, (m,)

    m, v = _moments(opt, state[0], state[1], mean_delta)
    # step = lr * m / (sqrt(v) + tau), built in one scratch array
    step = np.sqrt(v)
    step += np.float32(opt.tau)
    np.divide(m, step, out=step)
    step *= lr
    step += global_vector
    return step, (m, v)


def _moments(
    opt: ServerOptimizer, m: np.ndarray, v: np.ndarray, delta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """New first and second moments for adam, yogi or adagrad (fresh arrays)."""
    scratch = delta * np.float32(1.0 - opt.beta1)
    new_m = m * np.float32(opt.beta1)
    new_m += scratch
    square = np.multiply(delta, delta, out=scratch)  # Δ², reusing the scratch
    if opt.name == "adagrad":
        return new_m, np.add(v, square, out=square)
    if opt.name == "adam":
        new_v = v * np.float32(opt.beta2)
        square *= np.float32(1.0 - opt.beta2)
        new_v += square
        return new_m, new_v
    # yogi: v − (1−β2)·Δ²·sign(v − Δ²); v only moves towards Δ², by at most (1−β2)·Δ²
    sign = np.subtract(v, square)
    np.sign(sign, out=sign)
    sign *= square
    sign *= np.float32(1.0 - opt.beta2)
    return new_m, np.subtract(v, sign, out=square)


def server_sgd(global_vector: np.ndarray, mean_delta: np.ndarray, *, server_lr: float) -> np.ndarray:
    """global + server_lr * mean_delta, as a new vector; the inputs are not modified."""
    if global_vector.shape != mean_delta.shape:
        raise ValueError(f"mean delta shape {mean_delta.shape} differs from the global {global_vector.shape}")
    out = mean_delta * np.float32(server_lr)
    out += global_vector
    return out
