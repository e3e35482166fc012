"""Weighted FedAvg folding (aggregation/mean.py) and the plain server step (server_opt.server_sgd)."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.aggregation.mean import client_weight, fold, weighted_mean
from fedlm.aggregation.server_opt import server_sgd


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)



def test_client_weight_by_samples_and_uniform():
    assert client_weight(7, "samples") == 7.0
    assert client_weight(7, "uniform") == 1.0
    with pytest.raises(ValueError, match="unknown weighting"):
        client_weight(7, "median")


def test_fold_adds_the_weighted_update_in_place():
    # Prepare
    total = _f32(1, 1, 1)
    pointer = total.ctypes.data
    update = _f32(1, 2, 3)
    # Execute
    fold(total, update, 2.0)
    # Assert
    assert total.ctypes.data == pointer and total.tolist() == [3.0, 5.0, 7.0]
    assert update.tolist() == [1.0, 2.0, 3.0]


def test_fold_refuses_a_mismatched_update():
    total = _f32(1, 1, 1)
    with pytest.raises(ValueError, match="same shape"):
        fold(total, _f32(1, 2), 1.0)
    assert total.tolist() == [1.0, 1.0, 1.0]


def test_weighted_mean_divides_once_and_refuses_zero_weight():
    # Prepare
    total = _f32(10, 20, 30)
    # Execute / Assert
    assert weighted_mean(total, 4.0).tolist() == [2.5, 5.0, 7.5]
    assert total.tolist() == [10.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="zero"):
        weighted_mean(total, 0.0)


def test_server_sgd_does_not_modify_its_inputs_and_checks_shapes():
    # Prepare
    global_vector, mean_delta = _f32(1, 1, 1), _f32(2.5, 5, 7.5)
    # Execute
    out = server_sgd(global_vector, mean_delta, server_lr=0.5)
    # Assert
    assert out.tolist() == [2.25, 3.5, 4.75]
    assert global_vector.tolist() == [1.0, 1.0, 1.0] and mean_delta.tolist() == [2.5, 5.0, 7.5]
    with pytest.raises(ValueError, match="shape"):
        server_sgd(global_vector, _f32(1, 2), server_lr=1.0)


def test_client_weight_cap_bounds_the_sample_count():
    assert client_weight(7, "samples", max_weight=100.0) == 7.0
    assert client_weight(2**31 - 1, "samples", max_weight=100.0) == 100.0
    assert client_weight(2**31 - 1, "samples", max_weight=0.0) == float(2**31 - 1)  # 0 = no cap
    assert client_weight(2**31 - 1, "uniform", max_weight=100.0) == 1.0


def test_largest_share_names_the_heaviest_client():
    from fedlm.aggregation.mean import largest_share

    assert largest_share({"a": 1.0, "b": 3.0}) == ("b", 0.75)
    assert largest_share({"a": 2.0, "b": 2.0}) == ("a", 0.5)  # ties: the first name, so the answer is stable
    assert largest_share({}) == ("", 0.0)
