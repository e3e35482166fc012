"""Partitions of one central corpus into simulated clients: IID, Dirichlet label skew, by key.

- IID: a random permutation of the records cut into near-equal parts.
- Dirichlet label skew (Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical
  Data Distribution for Federated Visual Classification", arXiv:1909.06335): for every
  label, client shares q ~ Dir(alpha * 1) are drawn and that label's shuffled records are
  cut accordingly. Small alpha gives each client few labels; large alpha approaches IID.
  The partition is used as drawn, with no rebalancing or redraws, so with small alpha or
  many clients some clients may get no record at all.
- By key: one client per distinct key (an author, a user, a source document).

Every function takes an explicit `numpy.random.Generator`; none uses numpy's global state.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from fedlm.data.folders import read_jsonl_objects
from fedlm.data.types import FederatedDataset, check_seed, check_test_fraction, make_client

METHODS = ("iid", "dirichlet", "by_key")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_alpha(alpha: float) -> None:
    numbers = int | float | np.integer | np.floating
    numeric = not isinstance(alpha, bool) and isinstance(alpha, numbers)
    if not (numeric and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")


def partition_iid(num_records: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`num_clients` index arrays: a random permutation of range(num_records), cut near-equally.

    Every record is in exactly one part; sizes differ by at most one (some parts are empty
    when num_records < num_clients). Indices within a part are sorted.
    """
    _check_count("num_records", num_records, 0)
    _check_count("num_clients", num_clients, 1)
    parts = np.array_split(rng.permutation(num_records), num_clients)
    return [np.sort(part).astype(np.int64) for part in parts]


def _groups(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """key -> positions holding it, keys in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        try:
            groups.setdefault(key, []).append(i)
        except TypeError:
            raise ValueError(f"key at position {i} is not hashable: {type(key).__name__}") from None
    return groups


def partition_dirichlet(
    labels: Sequence[Hashable], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """`num_clients` index arrays with label skew drawn from a symmetric Dirichlet(alpha).

    Labels are visited in order of first appearance; for each, its records are shuffled,
    client shares q ~ Dir(alpha) are drawn and the records are cut at
    floor(cumsum(q) * count). Every record lands in exactly one client. Clients may end up
    empty (likely when alpha is small or num_clients is large); callers decide whether to
    drop them. Indices within a client are sorted. Requires alpha > 0.
    """
    _check_count("num_clients", num_clients, 1)
    _check_alpha(alpha)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for positions in _groups(labels).values():
        records = rng.permutation(np.asarray(positions, dtype=np.int64))
        shares = rng.dirichlet(np.full(num_clients, float(alpha)))
        cuts = np.floor(np.cumsum(shares)[:-1] * len(records)).astype(np.int64)
        for client, chunk in enumerate(np.split(records, np.clip(cuts, 0, len(records)))):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def partition_by_key(keys: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    """key -> sorted indices of the records with that key, keys in order of first appearance."""
    return {key: np.asarray(idx, dtype=np.int64) for key, idx in _groups(keys).items()}


def _corpus_record(
    path: Path, number: int, record: dict, text_field: str, key_field: str | None
) -> tuple[str, object]:
    text = record.get(text_field)
    if not isinstance(text, str):
        raise ValueError(f"{path}, line {number}: expected a string field {text_field!r}")
    if key_field is None:
        return text, None
    if key_field not in record:
        raise ValueError(f"{path}, line {number}: missing key field {key_field!r}")
    key = record[key_field]
    if isinstance(key, list | dict):
        raise ValueError(
            f"{path}, line {number}: key field {key_field!r} must be a string, number or bool"
        )
    return text, key


def load_corpus(
    path: Path, *, text_field: str = "text", key_field: str | None = None
) -> tuple[list[str], list[object] | None]:
    """Read a JSONL corpus: (texts, keys), keys None unless `key_field` is given.

    Each non-blank line must be a JSON object with a string `text_field` and, when asked,
    a scalar `key_field`. Raises ValueError naming the file and line otherwise, and for a
    missing file or a corpus with no records.
    """
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"corpus {source} is not a file")
    records = [
        _corpus_record(source, n, record, text_field, key_field)
        for n, record in read_jsonl_objects(source)  # lines split on "\n" only, as JSON Lines defines them
    ]
    if not records:
        raise ValueError(f"corpus {source} holds no records")
    texts = [text for text, _ in records]
    return texts, (None if key_field is None else [key for _, key in records])


def _as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise ValueError("texts must be a sequence of strings, not a single string")
    try:
        records = list(texts)
    except TypeError:
        kind = type(texts).__name__
        raise ValueError(f"texts must be a sequence of strings, got {kind}") from None
    if not records:
        raise ValueError("texts must hold at least one record")
    for i, text in enumerate(records):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return records


def _check_method_arguments(
    method: str, num_clients: int | None, labels: Sequence[Hashable] | None, num_texts: int
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "by_key":
        if num_clients is not None:
            raise ValueError("num_clients must be None for method='by_key' (one client per key)")
    else:
        _check_count("num_clients", num_clients, 1)  # type: ignore[arg-type]
    if method == "iid" and labels is not None:
        raise ValueError("labels are not used by method='iid'; pass labels=None")
    if method != "iid":
        if labels is None:
            raise ValueError(f"method={method!r} needs labels (one per text)")
        if isinstance(labels, str) or not hasattr(labels, "__len__"):
            raise ValueError(f"labels must be a sequence, got {type(labels).__name__}")
        if len(labels) != num_texts:
            raise ValueError(f"labels must hold one entry per text: {num_texts}, got {len(labels)}")


def _index_groups(
    method: str,
    num_texts: int,
    num_clients: int | None,
    labels: Sequence[Hashable] | None,
    alpha: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """client id -> record indices, for the chosen method."""
    rng = np.random.default_rng(seed)
    if method == "by_key":
        groups: dict[str, np.ndarray] = {}
        for key, idx in partition_by_key(labels).items():  # type: ignore[arg-type]
            client_id = str(key)
            if client_id in groups:
                raise ValueError(f"labels: two keys make the same client id {client_id!r}")
            groups[client_id] = idx
        return groups
    if method == "iid":
        parts = partition_iid(num_texts, num_clients, rng)  # type: ignore[arg-type]
    else:
        parts = partition_dirichlet(labels, num_clients, alpha, rng)  # type: ignore[arg-type]
    width = max(4, len(str(len(parts) - 1)))
    return {f"client-{i:0{width}d}": idx for i, idx in enumerate(parts)}


def make_partitioned_dataset(
    texts: Sequence[str],
    *,
    method: str,
    num_clients: int | None,
    labels: Sequence[Hashable] | None = None,
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "corpus",
) -> FederatedDataset:
    """Simulate a federation from one corpus: partition `texts`, then split each client.

    method "iid" needs num_clients; "dirichlet" needs num_clients and `labels` (one per
    text) and uses `alpha`; "by_key" needs `labels` as keys (one client per key, id str(key))
    and num_clients=None. Partitions are drawn with numpy.random.default_rng(seed); client
    ids are "client-0000", ... for iid and dirichlet. Clients with no record are dropped.
    Each client's records keep corpus order and are split with `client_rng(seed, client_id)`.
    """
    texts = _as_texts(texts)
    _check_method_arguments(method, num_clients, labels, len(texts))
    _check_alpha(alpha)
    check_test_fraction(test_fraction)
    check_seed(seed)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    groups = _index_groups(method, len(texts), num_clients, labels, alpha, seed)
    clients = tuple(
        make_client(cid, [texts[i] for i in idx], test_fraction=test_fraction, seed=seed)
        for cid, idx in sorted(groups.items())
        if len(idx) > 0
    )
    return FederatedDataset(name=name, clients=clients)
