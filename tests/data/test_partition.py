"""Tests of the corpus partitioners, make_partitioned_dataset and the train/test split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedlm.data.partition import (
    load_corpus,
    make_partitioned_dataset,
    partition_by_key,
    partition_dirichlet,
    partition_iid,
)
from fedlm.data.types import ClientData, FederatedDataset, client_rng, split_train_test

NUM_LABELS = 10
LABELS = np.repeat(np.arange(NUM_LABELS), 500)  # 5000 records, 500 per label


def _label_shares(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Per non-empty client: the share of each label among its records."""
    return [np.bincount(LABELS[p], minlength=NUM_LABELS) / len(p) for p in parts if len(p)]


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    everything = np.concatenate(parts)
    assert len(everything) == n
    assert np.array_equal(np.sort(everything), np.arange(n))


# --- split_train_test and the data set types ---------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [(1, (1, 0)), (2, (1, 1)), (10, (8, 2)), (3, (2, 1))])
def test_split_train_test_counts(n: int, expected: tuple[int, int]):
    # Prepare
    samples = [f"s{i}" for i in range(n)]
    # Execute
    train, test = split_train_test(samples, test_fraction=0.2, rng=np.random.default_rng(0))
    # Assert
    assert (len(train), len(test)) == expected
    assert sorted(train + test) == sorted(samples)


def test_split_train_test_keeps_original_order_and_is_deterministic():
    # Prepare
    samples = [f"s{i:02d}" for i in range(20)]
    # Execute
    train, test = split_train_test(samples, test_fraction=0.25, rng=np.random.default_rng(5))
    again = split_train_test(samples, test_fraction=0.25, rng=np.random.default_rng(5))
    # Assert
    assert (train, test) == again
    assert list(train) == sorted(train) and list(test) == sorted(test)
    assert len(test) == 5


def test_split_train_test_with_zero_fraction_puts_all_in_train():
    train, test = split_train_test(["a", "b", "c"], test_fraction=0.0, rng=np.random.default_rng(0))
    assert (train, test) == (("a", "b", "c"), ())


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0, float("nan")])
def test_split_train_test_rejects_bad_fraction(fraction: float):
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(["a", "b"], test_fraction=fraction, rng=np.random.default_rng(0))


def test_split_train_test_rejects_no_samples():
    with pytest.raises(ValueError, match="empty"):
        split_train_test([], test_fraction=0.2, rng=np.random.default_rng(0))


def test_federated_dataset_validates_and_looks_up_clients():
    # Prepare
    a, b = ClientData("a", ("x",), ()), ClientData("b", ("y",), ("z",))
    # Execute
    dataset = FederatedDataset("toy", (a, b))
    # Assert
    assert (len(dataset), dataset.client_ids(), dataset.get("b")) == (2, ("a", "b"), b)
    with pytest.raises(KeyError, match="no client 'c' in data set 'toy'"):
        dataset.get("c")
    with pytest.raises(ValueError, match="duplicate client ids"):
        FederatedDataset("toy", (a, a))
    with pytest.raises(ValueError, match="sorted"):
        FederatedDataset("toy", (b, a))


def test_client_rng_is_the_documented_seed_sequence():
    # Prepare: crc32(b"alice") == 0x278EBC47
    expected = np.random.default_rng(np.random.SeedSequence([3, 0x278EBC47])).random(3)
    # Execute / Assert
    assert np.array_equal(client_rng(3, "alice").random(3), expected)


# --- partitioners -----------------------------------------------------------------------


@pytest.mark.parametrize(("num_records", "num_clients"), [(103, 10), (5, 8), (0, 3), (40, 1)])
def test_partition_iid_covers_each_index_once_in_near_equal_parts(num_records, num_clients):
    # Execute
    parts = partition_iid(num_records, num_clients, np.random.default_rng(0))
    # Assert
    assert len(parts) == num_clients
    _assert_exact_cover(parts, num_records)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_partition_iid_is_random_but_seeded():
    # Execute
    first = partition_iid(100, 4, np.random.default_rng(1))
    again = partition_iid(100, 4, np.random.default_rng(1))
    other = partition_iid(100, 4, np.random.default_rng(2))
    # Assert
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))
    assert not np.array_equal(first[0], np.arange(25))


@pytest.mark.parametrize("alpha", [0.05, 0.5, 1000.0])
def test_partition_dirichlet_covers_each_index_once(alpha: float):
    # Execute
    parts = partition_dirichlet(LABELS, 10, alpha, np.random.default_rng(0))
    # Assert
    assert len(parts) == 10
    _assert_exact_cover(parts, len(LABELS))


def test_partition_dirichlet_small_alpha_gives_each_client_mostly_one_label():
    # Execute
    shares = _label_shares(partition_dirichlet(LABELS, 10, 0.05, np.random.default_rng(0)))
    # Assert: IID clients would hold ~0.1 of their dominant label; here the mean share of a
    # client's dominant label is > 0.5 and at least half of the clients are > 50% one label.
    dominant = np.array([s.max() for s in shares])
    assert dominant.mean() > 0.5
    assert np.mean(dominant > 0.5) >= 0.5


def test_partition_dirichlet_large_alpha_gives_near_global_proportions():
    # Execute
    shares = _label_shares(partition_dirichlet(LABELS, 10, 1000.0, np.random.default_rng(0)))
    # Assert: every client's share of every label is within 0.03 of the global 0.1.
    assert len(shares) == 10
    assert max(np.abs(s - 0.1).max() for s in shares) < 0.03


def test_partition_dirichlet_accepts_any_hashable_labels():
    # Prepare
    labels = ["cat", "dog", ("a", 1), "cat", None, "dog"] * 10
    # Execute
    parts = partition_dirichlet(labels, 3, 0.5, np.random.default_rng(0))
    # Assert
    _assert_exact_cover(parts, 60)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_partition_dirichlet_rejects_bad_alpha(alpha: float):
    with pytest.raises(ValueError, match="alpha"):
        partition_dirichlet(LABELS, 10, alpha, np.random.default_rng(0))


def test_partition_by_key_groups_exactly():
    # Prepare
    keys = ["b", "a", "b", "c", "a", "b"]
    # Execute
    groups = partition_by_key(keys)
    # Assert
    assert list(groups) == ["b", "a", "c"]
    assert {k: v.tolist() for k, v in groups.items()} == {"b": [0, 2, 5], "a": [1, 4], "c": [3]}


# --- load_corpus and make_partitioned_dataset --------------------------------------------


def test_load_corpus_reads_texts_and_keys(tmp_path: Path):
    # Prepare
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"body": f"t{i}", "author": i % 2}) + "\n" for i in range(4)) + "\n",
        encoding="utf-8",
    )
    # Execute
    texts, keys = load_corpus(corpus, text_field="body", key_field="author")
    only_texts = load_corpus(corpus, text_field="body")
    # Assert
    assert (texts, keys) == (["t0", "t1", "t2", "t3"], [0, 1, 0, 1])
    assert only_texts == (texts, None)


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ('{"text": "a"}\n{"text": 3}\n', {}, "line 2: expected a string field 'text'"),
        ('{"text": "a"}\n', {"key_field": "user"}, "line 1: missing key field 'user'"),
        ('{"text": "a", "user": [1]}\n', {"key_field": "user"}, "line 1: key field 'user' must be"),
        ("nope\n", {}, "line 1: not valid JSON"),
        ("\n\n", {}, "holds no records"),
    ],
)
def test_load_corpus_errors(tmp_path: Path, content: str, kwargs: dict, message: str):
    # Prepare
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(content, encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_corpus(corpus, **kwargs)


def test_load_corpus_missing_file_raises(tmp_path: Path):
    with pytest.raises(ValueError, match="is not a file"):
        load_corpus(tmp_path / "missing.jsonl")


def test_make_partitioned_dataset_iid():
    # Prepare
    texts = [f"text {i}" for i in range(103)]
    # Execute
    dataset = make_partitioned_dataset(texts, method="iid", num_clients=10, seed=4)
    # Assert
    assert dataset.name == "corpus"
    assert dataset.client_ids() == tuple(f"client-{i:04d}" for i in range(10))
    assert Counter(t for c in dataset.clients for t in c.train + c.test) == Counter(texts)
    # 103 records -> sizes 11, 11, 11, 10, ...; 0.2 * 11 = 2.2 -> 2 test samples.
    assert [len(c.train) + len(c.test) for c in dataset.clients] == [11, 11, 11] + [10] * 7
    assert [len(c.test) for c in dataset.clients] == [2] * 10
    assert dataset == make_partitioned_dataset(texts, method="iid", num_clients=10, seed=4)


def test_make_partitioned_dataset_dirichlet_drops_empty_clients():
    # Prepare
    texts = [f"t{i}" for i in range(len(LABELS))]
    parts = partition_dirichlet(LABELS, 50, 0.05, np.random.default_rng(0))
    non_empty = [i for i, p in enumerate(parts) if len(p)]
    # Execute
    dataset = make_partitioned_dataset(
        texts, method="dirichlet", num_clients=50, labels=LABELS, alpha=0.05
    )
    # Assert
    assert len(non_empty) < 50
    assert dataset.client_ids() == tuple(f"client-{i:04d}" for i in non_empty)
    client = dataset.get(f"client-{non_empty[0]:04d}")
    assert sorted(client.train + client.test) == sorted(texts[i] for i in parts[non_empty[0]])


def test_make_partitioned_dataset_by_key():
    # Prepare
    texts = ["a1", "b1", "a2", "c1", "b2"]
    keys = ["ann", "bob", "ann", 7, "bob"]
    # Execute
    dataset = make_partitioned_dataset(
        texts, method="by_key", num_clients=None, labels=keys, test_fraction=0.5
    )
    # Assert
    assert dataset.client_ids() == ("7", "ann", "bob")
    ann = dataset.get("ann")
    assert (len(ann.train), len(ann.test)) == (1, 1)
    assert dataset.get("7") == ClientData("7", ("c1",), ())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "random", "num_clients": 2}, "method must be one of"),
        ({"method": "iid", "num_clients": 0}, "num_clients"),
        ({"method": "iid", "num_clients": None}, "num_clients"),
        ({"method": "iid", "num_clients": 2, "labels": [0, 1, 0]}, "labels are not used"),
        ({"method": "dirichlet", "num_clients": 2}, "needs labels"),
        ({"method": "dirichlet", "num_clients": 2, "labels": [0, 1]}, "one entry per text"),
        ({"method": "dirichlet", "num_clients": 2, "labels": [0, 1, 0], "alpha": 0}, "alpha"),
        ({"method": "by_key", "num_clients": 2, "labels": [0, 1, 0]}, "num_clients must be None"),
        ({"method": "by_key", "num_clients": None, "labels": [1, "1", 2]}, "same client id '1'"),
        ({"method": "iid", "num_clients": 2, "test_fraction": 1}, "test_fraction"),
        ({"method": "iid", "num_clients": 2, "seed": -3}, "seed"),
        ({"method": "iid", "num_clients": 2, "name": ""}, "name"),
    ],
)
def test_make_partitioned_dataset_rejects_bad_arguments(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        make_partitioned_dataset(["x", "y", "z"], **kwargs)


@pytest.mark.parametrize(
    ("texts", "message"),
    [([], "at least one"), ("abc", "single string"), (["a", 1], r"texts\[1\]")],
)
def test_make_partitioned_dataset_rejects_bad_texts(texts, message: str):
    with pytest.raises(ValueError, match=message):
        make_partitioned_dataset(texts, method="iid", num_clients=1)


def test_reprs_show_counts_but_never_text():
    # Prepare
    client = ClientData("a", ("secret words", "more"), ("held out",))
    # Execute
    texts = repr(client), repr(FederatedDataset("toy", (client,)))
    # Assert
    assert texts == (
        "ClientData(client_id='a', train=<2 samples>, test=<1 samples>)",
        "FederatedDataset(name='toy', clients=<1>, samples=<3>)",
    )
