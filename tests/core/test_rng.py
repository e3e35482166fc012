"""Tests of the seeds derived from (run seed, round, client)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlm.core.rng import derive_seed, make_rng, seed_sequence, torch_generator


def _draws(seed: int, *parts: int | str) -> np.ndarray:
    return make_rng(seed, *parts).integers(0, 2**32, size=16)


def test_same_parts_give_the_same_stream():
    assert np.array_equal(_draws(7, 3, "alice"), _draws(7, 3, "alice"))


@pytest.mark.parametrize(
    "other",
    [(8, 3, "alice"), (7, 4, "alice"), (7, 3, "bob"), (7, 3), (7, 3, "alice", 1), (7, "alice", 3)],
    ids=["run-seed", "round", "client", "fewer-parts", "more-parts", "swapped-parts"],
)
def test_changing_any_part_gives_a_different_stream(other):
    assert not np.array_equal(_draws(7, 3, "alice"), _draws(*other))


def test_streams_of_one_round_differ_across_many_clients():
    # Prepare
    clients = [f"client-{i}" for i in range(200)]
    # Execute
    firsts = {int(make_rng(0, 1, c).integers(0, 2**63)) for c in clients}
    # Assert
    assert len(firsts) == len(clients)


def test_derive_seed_is_deterministic_and_fits_in_63_bits():
    # Execute
    seeds = [derive_seed(0, r, "c") for r in range(500)]
    # Assert
    assert seeds == [derive_seed(0, r, "c") for r in range(500)]
    assert all(0 <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == 500
    assert max(seeds) >= 2**62  # the top bit in use: not truncated to 32 bits


def test_derive_seed_differs_by_round_and_client():
    base = derive_seed(1, 2, "a")
    assert base != derive_seed(1, 3, "a")
    assert base != derive_seed(1, 2, "b")
    assert base != derive_seed(2, 2, "a")


def test_torch_generator_is_reproducible():
    # Execute
    first = torch.rand(8, generator=torch_generator(5, 1, "a"))
    again = torch.rand(8, generator=torch_generator(5, 1, "a"))
    other = torch.rand(8, generator=torch_generator(5, 2, "a"))
    # Assert
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_torch_generator_is_seeded_with_derive_seed():
    assert torch_generator(5, 1, "a").initial_seed() == derive_seed(5, 1, "a")


@pytest.mark.parametrize("parts", [(0, -1), (-1,), (0, 1, -3)], ids=["round", "seed", "last"])
def test_negative_parts_are_rejected(parts):
    # Prepare
    seed, *rest = parts
    # Execute / Assert
    with pytest.raises(ValueError, match="non-negative"):
        make_rng(seed, *rest)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(seed, *rest)


def test_every_part_changes_the_stream():
    reference = derive_seed(1, 2, "x")
    assert derive_seed(2, 2, "x") != reference
    assert derive_seed(1, 3, "x") != reference
    assert derive_seed(1, 2, "y") != reference
    assert seed_sequence(1, 2, "x").entropy == seed_sequence(1, 2, "x").entropy


def test_distinct_client_ids_never_share_a_stream():
    assert not np.array_equal(_draws(0, 1, "plumless"), _draws(0, 1, "buckeroo"))


@pytest.mark.parametrize(
    ("parts", "other"),
    [(("cohort",), ("cohort", 0)), ((3, 2**32), (3, 0, 1))],
    ids=["trailing-zero", "wide-int"],
)
def test_streams_named_by_different_parts_differ(parts, other):
    assert derive_seed(0, *parts) != derive_seed(0, *other)


@pytest.mark.parametrize("part", [2**64, 2**70])
def test_parts_past_64_bits_are_rejected(part: int):
    with pytest.raises(ValueError, match="2\\*\\*64"):
        derive_seed(0, part)


def test_the_largest_64_bit_part_is_accepted_and_distinct():
    assert derive_seed(0, 2**64 - 1) != derive_seed(0, 2**32 - 1)


@pytest.mark.parametrize("part", [True, 1.0, None, b"alice"], ids=["bool", "float", "none", "bytes"])
def test_parts_that_are_neither_int_nor_str_are_rejected(part):
    with pytest.raises(TypeError, match="ints or strings"):
        make_rng(0, part)


def test_numpy_integer_parts_name_the_same_stream_as_python_ints():
    assert derive_seed(np.int64(4), np.uint32(2), "a") == derive_seed(4, 2, "a")
