"""The federated data set: each client's text samples, split into local train and test parts.

Splits are deterministic: a client's split comes from a generator seeded by the run seed
and the client's id alone (`client_rng`), so it does not change when other clients are
added to or removed from the federation.
"""

from __future__ import annotations

import functools
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlm.data.conversations import Conversation


@dataclass(frozen=True, repr=False)
class LabelledText:
    """A text and its label (task.kind = "classify"); the repr shows the text's length only, never text or label."""

    text: str
    label: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not isinstance(self.label, str) or not self.label:
            raise ValueError("a labelled sample needs a string text and a non-empty string label")

    def __repr__(self) -> str:
        return f"LabelledText(<{len(self.text)} chars>)"


# One sample of a client: plain text (causal LM), a conversation (instruction tuning) or a labelled text (classify).
Sample = str | Conversation | LabelledText


@dataclass(frozen=True, repr=False)
class ClientData:
    """One client's samples (texts or conversations): `train` for local training, `test` held out.

    The repr shows sample counts only, so that logging a client never logs its text.
    """

    client_id: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ValueError(f"client_id must be a non-empty string, got {self.client_id!r}")
        for part in ("train", "test"):
            samples = tuple(getattr(self, part))
            if not all(isinstance(s, str | Conversation | LabelledText) for s in samples):
                raise ValueError(f"client {self.client_id!r}: every {part} sample must be a str, a Conversation "
                                 "or a LabelledText")
            object.__setattr__(self, part, samples)

    def __repr__(self) -> str:
        return (
            f"ClientData(client_id={self.client_id!r}, "
            f"train=<{len(self.train)} samples>, test=<{len(self.test)} samples>)"
        )


@dataclass(frozen=True, repr=False)
class FederatedDataset:
    """A named federation of clients, sorted by client id; ids are unique.

    The repr shows counts only, never sample text.
    """

    name: str
    clients: tuple[ClientData, ...]

    def __post_init__(self) -> None:
        clients = tuple(self.clients)
        if not all(isinstance(c, ClientData) for c in clients):
            raise ValueError(f"data set {self.name!r}: every client must be a ClientData")
        ids = [c.client_id for c in clients]
        duplicates = sorted(cid for cid, count in Counter(ids).items() if count > 1)
        if duplicates:
            raise ValueError(f"data set {self.name!r}: duplicate client ids {duplicates[:5]}")
        if ids != sorted(ids):
            raise ValueError(f"data set {self.name!r}: clients must be sorted by client_id")
        object.__setattr__(self, "clients", clients)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {c.client_id: i for i, c in enumerate(self.clients)}

    def __repr__(self) -> str:
        samples = sum(len(c.train) + len(c.test) for c in self.clients)
        clients = len(self.clients)
        return f"FederatedDataset(name={self.name!r}, clients=<{clients}>, samples=<{samples}>)"

    def client_ids(self) -> tuple[str, ...]:
        return tuple(c.client_id for c in self.clients)

    def get(self, client_id: str) -> ClientData:
        try:
            return self.clients[self._index[client_id]]
        except KeyError:
            raise KeyError(
                f"no client {client_id!r} in data set {self.name!r} ({len(self.clients)} clients)"
            ) from None

    def __len__(self) -> int:
        return len(self.clients)


def client_rng(seed: int, client_id: str) -> np.random.Generator:
    """The generator that splits `client_id`'s samples under run `seed`.

    Same stream as `fedlm.core.rng.make_rng(seed, client_id)`, without importing torch.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(client_id.encode())]))


def check_seed(seed: int) -> None:
    """Raise ValueError unless `seed` is a non-negative int (what SeedSequence accepts)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def check_test_fraction(test_fraction: float) -> None:
    """Raise ValueError unless 0 <= test_fraction < 1."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float | np.floating):
        raise ValueError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")


def num_test_samples(n: int, test_fraction: float) -> int:
    """How many of `n` samples go to test: round(test_fraction * n), within [1, n - 1] if n >= 2.

    Python's round() rounds halves to even (round(0.5) == 0, round(1.5) == 2).
    """
    count = round(test_fraction * n)
    if test_fraction > 0 and n >= 2:
        count = max(count, 1)
    return min(count, n - 1)


def split_train_test(
    samples: Sequence[Sample], *, test_fraction: float, rng: np.random.Generator
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """Split `samples` into (train, test), each in the samples' original order.

    The rng shuffles the indices; the first `num_test_samples(n, test_fraction)` of them go to
    test. Train always keeps at least one sample; test gets at least one when n >= 2 and
    test_fraction > 0. Raises ValueError for an empty `samples` or test_fraction outside [0, 1).
    """
    check_test_fraction(test_fraction)
    n = len(samples)
    if n == 0:
        raise ValueError("cannot split an empty list of samples: train needs at least one")
    in_test = np.zeros(n, dtype=bool)
    in_test[rng.permutation(n)[: num_test_samples(n, test_fraction)]] = True
    train = tuple(s for s, t in zip(samples, in_test, strict=True) if not t)
    test = tuple(s for s, t in zip(samples, in_test, strict=True) if t)
    return train, test


def make_client(
    client_id: str, samples: Sequence[Sample], *, test_fraction: float, seed: int
) -> ClientData:
    """A client whose samples are split with its own generator `client_rng(seed, client_id)`."""
    rng = client_rng(seed, client_id)
    train, test = split_train_test(samples, test_fraction=test_fraction, rng=rng)
    return ClientData(client_id=client_id, train=train, test=test)
