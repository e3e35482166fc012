"""A federation read from a folder: one client per sub-folder of .txt files or per .jsonl file.

Layout of `path` (both kinds may be mixed):

- `path/<client_id>/*.txt`: the sub-folder is a client; each .txt file (read in name order)
  holds paragraphs separated by blank lines, and each paragraph is one sample (stripped).
- `path/<client_id>.jsonl`: the file is a client; each line is a JSON object whose "text"
  string is one sample. Blank lines are skipped.

Samples that are empty or only whitespace are dropped. Hidden entries (names starting with
".") and other files are ignored. Each client's samples are split into train/test with
its own generator `client_rng(seed, client_id)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from fedlm.data.types import FederatedDataset, Sample, check_seed, check_test_fraction, make_client

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n")


def read_utf8(path: Path) -> str:
    """The text of `path`; ValueError naming the file if it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_jsonl_objects(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of the JSONL file `path`.

    Lines are split on "\n" only (as JSON Lines defines them), so a U+2028 inside a JSON
    string does not break its line. Raises ValueError, naming the file and line, for a line
    that is not valid JSON or not a JSON object; the message never quotes the line.
    """
    records = []
    for number, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {kind}")
        records.append((number, record))
    return records


def check_folder(path: Path) -> Path:
    """`path` as a Path; ValueError if it does not exist or is not a folder."""
    root = Path(path)
    if not root.exists():
        raise ValueError(f"path {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"path {root} is not a folder")
    return root


def list_files(folder: Path, suffix: str) -> list[Path]:
    """The files directly in `folder` whose names end in `suffix`, in name order, hidden ones skipped."""
    files = (f for f in folder.glob(f"*{suffix}") if f.is_file() and not f.name.startswith("."))
    return sorted(files)


def _paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs of `text`, stripped; paragraphs are separated by blank lines."""
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def read_txt_client(folder: Path) -> list[str]:
    """The paragraphs of every .txt file directly in `folder`, files in name order."""
    files = list_files(folder, ".txt")
    if not files:
        raise ValueError(f"client folder {folder} holds no .txt files")
    return [p for f in files for p in _paragraphs(read_utf8(f))]


def _jsonl_text(path: Path, number: int, record: dict) -> str:
    text = record.get("text")
    if not isinstance(text, str):
        found = "no field" if text is None else f"a {type(text).__name__}"
        raise ValueError(f'{path}, line {number}: expected a string "text" field, found {found}')
    return text


def read_jsonl_client(path: Path) -> list[str]:
    """The "text" of every JSON object line in `path` (blank lines skipped)."""
    return [_jsonl_text(path, number, record) for number, record in read_jsonl_objects(path)]


def find_client_sources(path: Path) -> dict[str, Path]:
    """client id -> its sub-folder or .jsonl file, for every client entry in `path`.

    Hidden entries and other files are skipped; ValueError if two entries give the same id.
    """
    sources: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            client_id = entry.name
        elif entry.is_file() and entry.suffix == ".jsonl":
            client_id = entry.stem
        else:
            continue
        if client_id in sources:
            other = sources[client_id]
            raise ValueError(f"duplicate client id {client_id!r}: both {other} and {entry}")
        sources[client_id] = entry
    return sources


def _text_samples(client_id: str, source: Path) -> list[str]:
    samples = read_txt_client(source) if source.is_dir() else read_jsonl_client(source)
    samples = [s for s in samples if s.strip()]
    if not samples:
        raise ValueError(f"client {client_id!r} ({source}) has no non-empty samples")
    return samples


def load_client_folders(
    path: Path, read_client: Callable[[str, Path], list[Sample]], expected: str, *, test_fraction: float, seed: int,
) -> FederatedDataset:
    """A federation from `path`: `read_client(client_id, source)` for each client entry (`find_client_sources`).

    Each client is split by `make_client`; the data set is named after the folder. A folder
    with no client entries is refused, saying the layout `expected`.
    """
    check_test_fraction(test_fraction)
    check_seed(seed)
    root = check_folder(path)
    sources = find_client_sources(root)
    if not sources:
        raise ValueError(f"path {root} holds no clients: expected {expected}")
    clients = tuple(
        make_client(cid, read_client(cid, source), test_fraction=test_fraction, seed=seed)
        for cid, source in sorted(sources.items())
    )
    return FederatedDataset(name=root.resolve().name, clients=clients)


def load_folder(path: Path, *, test_fraction: float = 0.2, seed: int = 0) -> FederatedDataset:
    """The federation stored in `path`: one client per sub-folder of .txt files or per .jsonl file.

    The data set is named after the folder. Raises ValueError for a missing path, a folder
    with no clients, a duplicate client id, a malformed JSONL line (file and line number
    given) or a client without samples.
    """
    return load_client_folders(path, _text_samples, "sub-folders of .txt files or .jsonl files",
                               test_fraction=test_fraction, seed=seed)
