"""The update sketch: exact for short vectors, linear, and its cosines within a stated error of the exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.monitoring.sketch import SKETCH_WIDTH, cosines_to_others, make_sketcher, sketch_into
from fedlm.monitoring.watch import observe, observed_norms, observed_sketches, open_watch


def sketch(sketcher, vector):
    return sketch_into(sketcher, vector, np.empty(sketcher.width, np.float32)).copy()


def test_a_vector_no_longer_than_the_width_is_sketched_exactly():
    # Prepare: a bucket per coordinate, so only the signs act, and sign^2 = 1
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, 100)).astype(np.float32)
    sketcher = make_sketcher(100, seed=3)
    # Execute
    su, sv = sketch(sketcher, u), sketch(sketcher, v)
    # Assert
    assert float(su @ sv) == pytest.approx(float(u @ v), rel=1e-5)
    assert np.count_nonzero(su[100:]) == 0 and sorted(np.abs(su[:100])) == pytest.approx(sorted(np.abs(u)))


def test_the_sketch_is_linear_and_fixed_by_the_seed():
    # Prepare: 5000 coordinates fold 2039 buckets twice and a tail of 922
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((2, 5000)).astype(np.float32)
    sketcher = make_sketcher(5000, seed=7)
    # Execute / Assert
    np.testing.assert_allclose(sketch(sketcher, 2 * u + v), 2 * sketch(sketcher, u) + sketch(sketcher, v), atol=1e-4)
    assert np.array_equal(sketch(make_sketcher(5000, seed=7), u), sketch(sketcher, u))
    assert not np.array_equal(sketch(make_sketcher(5000, seed=8), u), sketch(sketcher, u))


def test_cosines_to_the_others_on_a_worked_example():
    # Prepare: e1, e2 and e1 + e2: the third is at 45 degrees to both, the others' directions sum to it
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], np.float32)
    # Execute
    cosines = cosines_to_others(rows)
    # Assert: e1 against e2 + (e1 + e2)/sqrt 2 is cos 67.5 degrees; e1 + e2 against e1 + e2 is 1
    assert cosines == pytest.approx([np.cos(3 * np.pi / 8), np.cos(3 * np.pi / 8), 1.0])


def test_a_zero_update_and_a_lone_update_have_no_cosine():
    assert np.isnan(cosines_to_others(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]))[0])
    assert np.isnan(cosines_to_others(np.array([[1.0, 2.0]]))).all()


def test_one_update_scaled_a_hundredfold_does_not_make_the_honest_ones_look_opposed():
    # Prepare: four honest updates near e1 and one at -100 e1 (its direction counts once, not a hundred times)
    rng = np.random.default_rng(2)
    honest = np.array([1.0, 0.0, 0.0]) + 0.3 * rng.standard_normal((4, 3))
    rows = np.vstack([honest, [[-100.0, 0.0, 0.0]]]).astype(np.float32)
    # Execute
    cosines = cosines_to_others(rows)
    # Assert
    assert (cosines[:4] > 0.3).all() and cosines[4] < -0.9


def cohort(rng, size, n=8):
    """n - 1 updates sharing a direction in different amounts, and one opposed to it, scaled three times."""
    common = rng.standard_normal(size)
    honest = [common * rng.uniform(0.2, 1.0) + rng.standard_normal(size) for _ in range(n - 1)]
    return np.stack([*honest, -3 * common + rng.standard_normal(size)]).astype(np.float32)


def test_sketched_cosines_stay_within_0_1_of_the_exact_ones_over_200_seeds():
    # Prepare: 200 cohorts of 8 updates of 50,000 coordinates (a LoRA-sized vector folds 24 times), each with
    # its own sketch seed. Measured: mean error 0.014, RMS 0.019 (about 1 / sqrt(2039) = 0.022), max 0.067.
    errors = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        rows = cohort(rng, 50_000)
        sketcher = make_sketcher(50_000, seed=seed)
        # Execute
        sketches = np.stack([sketch(sketcher, row) for row in rows])
        errors.append(cosines_to_others(sketches) - cosines_to_others(rows))
    # Assert
    errors = np.abs(np.concatenate(errors))
    assert errors.max() < 0.1
    assert np.sqrt(np.mean(errors**2)) < 0.025
    assert np.sqrt(np.mean(errors**2)) > 0.005  # not exact: the bound is the sketch's, not a shortcut's


def test_updates_with_energy_on_a_few_columns_of_a_lora_like_matrix_sketch_as_well():
    # Prepare: [8, 6250] matrices (flattened row-major) whose energy sits on 40 shared columns: a layout
    # that a power-of-two bucket count could alias, which a prime width does not. Measured: RMS 0.010, max 0.040.
    errors = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        columns, shared = rng.choice(6250, 40, replace=False), rng.standard_normal((8, 40))
        rows = np.zeros((6, 8, 6250), np.float32)
        for i, sign in enumerate([1, 1, 1, 1, 1, -1]):
            rows[i][:, columns] = sign * shared + 0.8 * rng.standard_normal((8, 40))
        rows = rows.reshape(6, -1)
        sketcher = make_sketcher(rows.shape[1], seed=seed)
        # Execute
        sketches = np.stack([sketch(sketcher, row) for row in rows])
        errors.append(cosines_to_others(sketches) - cosines_to_others(rows))
    # Assert
    assert np.abs(np.concatenate(errors)).max() < 0.1


def test_the_watch_keeps_exact_norms_and_sketches_and_refuses_without_changing():
    # Prepare
    sketcher = make_sketcher(3, seed=0)
    watch = open_watch(sketcher, cohort_size=2)
    observe(watch, "a", np.array([3.0, 4.0, 0.0], np.float32))
    before = (watch.norms.copy(), watch.sketches.copy(), list(watch.clients))
    # Execute / Assert: a client seen, a wrong shape, and one past the cohort are refused, state unchanged
    with pytest.raises(ValueError, match="already observed"):
        observe(watch, "a", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="sketch shapes"):
        observe(watch, "b", np.ones(4, np.float32))
    assert np.array_equal(watch.norms, before[0]) and np.array_equal(watch.sketches, before[1])
    assert watch.clients == before[2]
    observe(watch, "b", np.array([0.0, 0.0, 2.0], np.float32))
    with pytest.raises(ValueError, match="holds 2 updates"):
        observe(watch, "c", np.ones(3, np.float32))
    assert observed_norms(watch).tolist() == [5.0, 2.0] and watch.clients == ["a", "b"]
    assert np.abs(observed_sketches(watch)[0][:3]).tolist() == [3.0, 4.0, 0.0]
    assert SKETCH_WIDTH == watch.sketches.shape[1]
