"""Tests of the flat float32 vector, its Spec, and in-place reads and writes of parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlm.core.vectors import (
    Entry,
    Spec,
    check_vector,
    flatten,
    make_spec,
    read_into,
    spec_of,
    unflatten,
    write_from,
)

# A scalar-shaped entry, a matrix, a 3-D tensor and a vector: 1 + 6 + 24 + 4 = 35 floats.
SHAPES = [("scale", ()), ("lora_A", (2, 3)), ("cube", (2, 3, 4)), ("bias", (4,))]


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES}


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in _tensors(seed).values()]


# --- Spec -------------------------------------------------------------------------------


def test_make_spec_lays_entries_out_back_to_back():
    # Execute
    spec = make_spec(SHAPES)
    # Assert
    assert [(e.offset, e.stop) for e in spec.entries] == [(0, 1), (1, 7), (7, 31), (31, 35)]
    assert spec.size == 35
    assert spec.names == ("scale", "lora_A", "cube", "bias")


def test_empty_spec_has_size_zero():
    assert make_spec([]).size == 0


def test_spec_rejects_duplicate_names():
    # Prepare
    entries = (Entry("w", (2,), 0), Entry("w", (2,), 2))
    # Execute / Assert
    with pytest.raises(ValueError, match="duplicate"):
        Spec(entries)


@pytest.mark.parametrize(
    "entries",
    [
        (Entry("a", (2,), 1),),  # does not start at 0
        (Entry("a", (2,), 0), Entry("b", (2,), 3)),  # a gap after "a"
        (Entry("a", (2,), 0), Entry("b", (2,), 1)),  # overlaps "a"
    ],
    ids=["first-not-at-zero", "gap", "overlap"],
)
def test_spec_rejects_offsets_that_do_not_follow_on(entries):
    with pytest.raises(ValueError, match="starts at"):
        Spec(entries)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64", "int8"])
def test_spec_rejects_non_float32_entries(dtype: str):
    with pytest.raises(ValueError, match="float32"):
        Spec((Entry("a", (2,), 0, dtype=dtype),))


def test_spec_of_reads_names_and_shapes_from_parameters():
    # Prepare
    params = {"x": torch.zeros(2, 3), "y": torch.zeros(5)}
    # Execute
    spec = spec_of(params)
    # Assert
    assert spec == make_spec([("x", (2, 3)), ("y", (5,))])


def test_fingerprint_is_equal_for_equal_specs():
    assert make_spec(SHAPES).fingerprint() == make_spec(list(SHAPES)).fingerprint()


@pytest.mark.parametrize(
    "changed",
    [
        [("scale", ()), ("lora_A", (3, 2)), ("cube", (2, 3, 4)), ("bias", (4,))],  # same size, new shape
        [("scale", ()), ("lora_A", (2, 3)), ("cube", (2, 3, 4)), ("bias", (5,))],  # one more float
        [("scale", ()), ("lora_B", (2, 3)), ("cube", (2, 3, 4)), ("bias", (4,))],  # renamed
        [("lora_A", (2, 3)), ("scale", ()), ("cube", (2, 3, 4)), ("bias", (4,))],  # reordered
    ],
    ids=["reshaped", "resized", "renamed", "reordered"],
)
def test_fingerprint_changes_with_the_layout(changed):
    assert make_spec(changed).fingerprint() != make_spec(SHAPES).fingerprint()


# --- check_vector -----------------------------------------------------------------------


def test_check_vector_accepts_a_float32_vector_of_the_spec_size():
    check_vector(make_spec(SHAPES), np.zeros(35, np.float32))


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.zeros(35, np.float64), "dtype"),
        (np.zeros(35, np.float16), "dtype"),
        (np.zeros(34, np.float32), "shape"),
        (np.zeros(36, np.float32), "shape"),
        (np.zeros((5, 7), np.float32), "shape"),
        (np.zeros((35, 1), np.float32), "shape"),
        (torch.zeros(35), "numpy array"),
        ([0.0] * 35, "numpy array"),
    ],
    ids=["float64", "float16", "short", "long", "2-D", "column", "torch", "list"],
)
def test_check_vector_rejects_wrong_type_dtype_or_shape(vector, message: str):
    with pytest.raises(ValueError, match=message):
        check_vector(make_spec(SHAPES), vector)


# --- flatten / unflatten ----------------------------------------------------------------


def test_flatten_then_unflatten_round_trips_bitwise():
    # Prepare
    spec, tensors = make_spec(SHAPES), _tensors(seed=3)
    # Execute
    vector = flatten(spec, tensors)
    back = unflatten(spec, vector)
    # Assert
    assert vector.dtype == np.float32 and vector.shape == (35,)
    for name, original in tensors.items():
        assert back[name].shape == original.shape
        assert back[name].tobytes() == original.tobytes()


def test_flatten_puts_each_tensor_at_its_offset():
    # Prepare
    spec = make_spec([("s", ()), ("m", (2, 2))])
    # Execute
    vector = flatten(spec, {"m": np.array([[1, 2], [3, 4]], np.float32), "s": np.float32(9)})
    # Assert
    assert vector.tolist() == [9, 1, 2, 3, 4]


def test_flatten_accepts_torch_tensors_that_require_grad():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=1)
    # Execute
    vector = flatten(spec, dict(zip(spec.names, params, strict=True)))
    # Assert
    assert vector.tobytes() == flatten(spec, _tensors(seed=1)).tobytes()


def test_flatten_names_the_missing_tensor():
    # Prepare
    tensors = _tensors()
    del tensors["cube"]
    # Execute / Assert
    with pytest.raises(KeyError, match="cube"):
        flatten(make_spec(SHAPES), tensors)


def test_flatten_rejects_a_tensor_of_the_wrong_shape():
    # Prepare
    tensors = _tensors()
    tensors["lora_A"] = tensors["lora_A"].T  # (3, 2), same size
    # Execute / Assert
    with pytest.raises(ValueError, match="lora_A"):
        flatten(make_spec(SHAPES), tensors)


def test_unflatten_returns_views_so_writes_reach_the_vector():
    # Prepare
    spec = make_spec(SHAPES)
    vector = np.zeros(spec.size, np.float32)
    # Execute
    views = unflatten(spec, vector)
    views["cube"][1, 2, 3] = 5.0
    views["scale"][...] = -1.0
    # Assert
    assert vector[7 + 12 + 8 + 3] == 5.0  # cube starts at 7; index (1, 2, 3) is 1*12 + 2*4 + 3
    assert vector[0] == -1.0
    assert np.count_nonzero(vector) == 2
    assert all(np.shares_memory(v, vector) for v in views.values())


def test_unflatten_rejects_a_vector_that_does_not_fit():
    with pytest.raises(ValueError, match="dtype"):
        unflatten(make_spec(SHAPES), np.zeros(35, np.float64))


# --- read_into / write_from -------------------------------------------------------------


def test_read_into_fills_the_preallocated_vector_in_spec_order():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=2)
    out = np.full(spec.size, np.nan, np.float32)
    # Execute
    returned = read_into(spec, params, out)
    # Assert
    assert returned is out
    assert out.tobytes() == flatten(spec, _tensors(seed=2)).tobytes()


def test_write_from_overwrites_parameters_in_place():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=0)
    ids, pointers = [id(p) for p in params], [p.data_ptr() for p in params]
    vector = flatten(spec, _tensors(seed=7))
    # Execute
    write_from(spec, params, vector)
    # Assert
    assert [id(p) for p in params] == ids
    assert [p.data_ptr() for p in params] == pointers
    assert all(p.requires_grad for p in params)
    for p, expected in zip(params, _tensors(seed=7).values(), strict=True):
        assert p.detach().numpy().tobytes() == expected.tobytes()


def test_write_from_then_read_into_round_trips_bitwise():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=0)
    vector = np.random.default_rng(5).standard_normal(spec.size).astype(np.float32)
    out = np.zeros(spec.size, np.float32)
    # Execute
    write_from(spec, params, vector)
    read_into(spec, params, out)
    # Assert
    assert out.tobytes() == vector.tobytes()


def test_write_from_copies_so_the_vector_can_be_reused():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=0)
    vector = np.ones(spec.size, np.float32)
    # Execute
    write_from(spec, params, vector)
    vector[:] = 2.0
    # Assert
    assert all(torch.all(p == 1.0) for p in params)


def test_read_into_copies_so_later_training_does_not_change_the_vector():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=0)
    out = read_into(spec, params, np.zeros(spec.size, np.float32))
    before = out.tobytes()
    # Execute
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    # Assert
    assert out.tobytes() == before


def test_write_from_rejects_a_wrong_vector_and_leaves_parameters_unchanged():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=0)
    before = [p.detach().clone() for p in params]
    # Execute
    with pytest.raises(ValueError, match="dtype"):
        write_from(spec, params, np.ones(spec.size, np.float64))
    # Assert
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_read_into_rejects_a_wrong_output_and_leaves_it_unchanged():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=0)
    out = np.zeros(spec.size + 1, np.float32)
    # Execute
    with pytest.raises(ValueError, match="shape"):
        read_into(spec, params, out)
    # Assert
    assert not out.any()


def test_write_from_with_too_few_parameters_leaves_them_unchanged():
    # Prepare
    spec, params = make_spec(SHAPES), _params(seed=0)
    before = [p.detach().clone() for p in params[:2]]
    # Execute
    with pytest.raises(ValueError):
        write_from(spec, params[:2], np.ones(spec.size, np.float32))
    # Assert
    assert all(torch.equal(p, b) for p, b in zip(params[:2], before, strict=True))


def test_write_from_rejects_a_parameter_whose_shape_differs_from_the_spec():
    # Prepare
    spec = make_spec([("w", (3,))])
    param = torch.zeros(2, 3)
    # Execute / Assert
    with pytest.raises(ValueError):
        write_from(spec, [param], np.arange(3, dtype=np.float32))
    assert not param.any()


def test_read_into_rejects_mismatched_parameters_and_leaves_the_output_unchanged():
    # Prepare
    spec = make_spec(SHAPES)
    params = _params(seed=0)
    params[2] = torch.zeros(4, 3, 2)  # "cube" transposed: same size, other shape
    out = np.zeros(spec.size, np.float32)
    # Execute
    with pytest.raises(ValueError, match="cube"):
        read_into(spec, params, out)
    # Assert
    assert not out.any()
