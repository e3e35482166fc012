"""A federation read from a folder: one client per top-level sub-folder, or per top-level .jsonl file.

Layout of `path`:

- `path/<client_id>/...`: the sub-folder is a client, and every file below it, at any depth,
  belongs to it. Files are read in path order, each by the reader its extension names, in
  any case (fedlm.data.textfiles): .txt and .md paragraphs, .jsonl "text" fields, .csv and
  .parquet "text" columns.
- `path/<client_id>.jsonl`: the file is a client; each line's "text" string is one sample.

Nothing is skipped without a word: hidden files and folders (names starting with "."), files
of other extensions, empty files and top-level files that are no client are listed, with the
reason, in the `DataReport` that reading builds (fedlm.data.report). A binary file, a file the
configured encoding cannot decode and a malformed record are refused, and loading stops with
one error that names every refused file and every client left without samples. Each client's
samples are split into train/test with its own generator `client_rng(seed, client_id)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fedlm.data.report import READ, REFUSED, SKIPPED, ClientReport, DataReport, FileReport, raise_for_problems
from fedlm.data.textfiles import (
    TEXT_READERS,
    FileRefusal,
    Reader,
    check_encoding,
    iter_file_samples,
    iter_jsonl_objects,
)
from fedlm.data.types import FederatedDataset, Sample, check_seed, check_test_fraction, make_client

CLIENT_FILE = ".jsonl"  # a top-level file with this extension (any case) is a client of its own
NOT_A_CLIENT = "not a client: a client is a sub-folder, or a <client>.jsonl file"


def read_jsonl_objects(path: Path, *, encoding: str = "utf-8") -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of the JSONL file `path`.

    Lines are split on "\n" only (as JSON Lines defines them), so a U+2028 inside a JSON
    string does not break its line. Raises ValueError, naming the file and line, for a line
    that is not valid JSON or not a JSON object, and naming the byte offset for a byte that
    `encoding` cannot decode; the message never quotes the line.
    """
    return list(iter_jsonl_objects(Path(path), check_encoding(encoding)))


def check_folder(path: Path) -> Path:
    """`path` as a Path; ValueError if it does not exist or is not a folder."""
    root = Path(path)
    if not root.exists():
        raise ValueError(f"path {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"path {root} is not a folder")
    return root


def walk_folder(folder: Path) -> list[tuple[Path, str | None]]:
    """(path, why it is skipped or None) for every file below `folder`, in path order.

    Hidden folders and links to folders are listed as one skipped entry each and not entered;
    a folder that cannot be listed is listed with the reason.
    """
    found: list[tuple[Path, str | None]] = []

    def unlisted(error: OSError) -> None:
        found.append((Path(error.filename), f"cannot be listed ({error.strerror})"))

    for top, dirs, files in os.walk(folder, onerror=unlisted):
        here, kept = Path(top), []
        for name in dirs:
            if name.startswith("."):
                found.append((here / name, "hidden folder"))
            elif (here / name).is_symlink():
                found.append((here / name, "link to a folder, not followed"))
            else:
                kept.append(name)
        dirs[:] = kept
        found.extend((here / name, "hidden file" if name.startswith(".") else None) for name in files)
    return sorted(found, key=lambda entry: entry[0].relative_to(folder).parts)


def list_files(folder: Path, suffix: str) -> list[Path]:
    """The files below `folder` (any depth) whose extension is `suffix` in any case; path order, hidden ones skipped."""
    wanted = suffix.lower()
    return [p for p, skip in walk_folder(folder) if skip is None and p.suffix.lower() == wanted and p.is_file()]


def _unknown(suffix: str) -> str:
    return f"unknown extension {suffix}" if suffix else "no extension"


def read_file(
    path: Path, relative: str, *, encoding: str, readers: dict[str, Reader], out: list | None,
) -> FileReport:
    """Read one file's samples into `out` (None: count only) and say what was done; a refused file adds none."""
    if not path.is_file():
        return FileReport(relative, SKIPPED, "not a regular file")
    size = path.stat().st_size
    suffix = path.suffix.lower()
    if suffix not in readers:
        return FileReport(relative, SKIPPED, _unknown(suffix), size)
    if size == 0:
        return FileReport(relative, SKIPPED, "empty file")
    start, count = len(out) if out is not None else 0, 0
    try:
        for sample in iter_file_samples(path, encoding, readers):
            count += 1
            if out is not None:
                out.append(sample)
    except (FileRefusal, OSError) as error:
        if out is not None:
            del out[start:]
        if isinstance(error, FileRefusal):
            return FileReport(relative, REFUSED, error.reason, size, 0, error.line, error.offset)
        return FileReport(relative, REFUSED, f"cannot be read ({error.strerror})", size)
    return FileReport(relative, READ, "", size, count)


def read_client_source(
    client_id: str, source: Path, root: Path, *, encoding: str, readers: dict[str, Reader], keep: bool = True,
) -> tuple[ClientReport, list]:
    """A client's report and samples (empty unless `keep`): `source` is its folder or file, `root` the data folder."""
    samples: list = []
    entries = walk_folder(source) if source.is_dir() else [(source, None)]
    files = []
    for path, skip in entries:
        relative = path.relative_to(root).as_posix()
        if skip is not None:
            files.append(FileReport(relative, SKIPPED, skip))
        else:
            files.append(read_file(path, relative, encoding=encoding, readers=readers, out=samples if keep else None))
    return ClientReport(client_id, source.relative_to(root).as_posix(), tuple(files)), samples


def find_client_sources(path: Path) -> dict[str, Path]:
    """client id -> its sub-folder or .jsonl file, for every client entry in `path`.

    Hidden entries and other files are left out (`ignored_entries` lists them); ValueError if
    two entries give the same id.
    """
    sources: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            client_id = entry.name
        elif entry.is_file() and entry.suffix.lower() == CLIENT_FILE:
            client_id = entry.stem
        else:
            continue
        if client_id in sources:
            other = sources[client_id]
            raise ValueError(f"duplicate client id {client_id!r}: both {other} and {entry}")
        sources[client_id] = entry
    return sources


def ignored_entries(path: Path, sources: dict[str, Path]) -> tuple[FileReport, ...]:
    """The top-level entries of `path` that are no client, each with the reason."""
    clients = set(sources.values())
    return tuple(
        FileReport(entry.name, SKIPPED, "hidden" if entry.name.startswith(".") else NOT_A_CLIENT)
        for entry in sorted(path.iterdir()) if entry not in clients
    )


def _no_clients(root: Path, ignored: tuple[FileReport, ...], formats: tuple[str, ...]) -> ValueError:
    files = [f for f in ignored if f.reason == NOT_A_CLIENT]
    hint = f" ({len(files)} top-level file(s) found, which are not clients)" if files else ""
    return ValueError(f"path {root} holds no clients{hint}: expected one sub-folder per client, holding "
                      f"{', '.join(formats)} files (at any depth), or <client>.jsonl files")


def read_folder(
    path: Path, *, encoding: str = "utf-8", readers: dict[str, Reader] = TEXT_READERS, keep_samples: bool = True,
) -> tuple[DataReport, dict[str, list]]:
    """The report of every client in `path` and, when `keep_samples`, each client's samples (file order).

    Raises ValueError for a missing path, an unknown encoding, a duplicate client id or a
    folder with no client; a bad file does not raise but is refused in the report.
    """
    check_encoding(encoding)
    root = check_folder(path)
    sources = find_client_sources(root)
    ignored = ignored_entries(root, sources)
    formats = tuple(readers)
    if not sources:
        raise _no_clients(root, ignored, formats)
    clients, samples = [], {}
    for client_id, source in sorted(sources.items()):
        client, samples[client_id] = read_client_source(client_id, source, root, encoding=encoding, readers=readers,
                                                 keep=keep_samples)
        clients.append(client)
    return DataReport(str(root), encoding, formats, tuple(clients), ignored), samples


def scan_folder(path: Path, *, encoding: str = "utf-8", readers: dict[str, Reader] = TEXT_READERS) -> DataReport:
    """What loading `path` would read, skip and refuse, per client: every file is read, no sample is kept."""
    return read_folder(path, encoding=encoding, readers=readers, keep_samples=False)[0]


def load_folder_with_report(
    path: Path, *, test_fraction: float = 0.2, seed: int = 0, encoding: str = "utf-8",
) -> tuple[FederatedDataset, DataReport]:
    """The federation stored in `path` (plain text), and the report of what was read, skipped and refused.

    Raises DataRefused (a ValueError) naming every refused file and every client without a
    sample, and ValueError as `read_folder` does.
    """
    check_test_fraction(test_fraction)
    check_seed(seed)
    report, samples = read_folder(path, encoding=encoding)
    raise_for_problems(report)
    clients = tuple(make_client(cid, samples.pop(cid), test_fraction=test_fraction, seed=seed)
                    for cid in sorted(samples))
    return FederatedDataset(name=Path(report.path).resolve().name, clients=clients), report


def load_folder(path: Path, *, test_fraction: float = 0.2, seed: int = 0, encoding: str = "utf-8") -> FederatedDataset:
    """The federation stored in `path`: one client per sub-folder of text files or per .jsonl file.

    The data set is named after the folder. See `load_folder_with_report` for what is raised.
    """
    return load_folder_with_report(path, test_fraction=test_fraction, seed=seed, encoding=encoding)[0]


def read_client_samples(path: Path, *, encoding: str = "utf-8") -> list[str]:
    """One client's samples: every file below the folder `path`, or the one file `path` (`fedlm join --data`).

    Raises DataRefused naming every refused file, or the client when it holds no sample.
    """
    check_encoding(encoding)
    source = Path(path)
    if not source.exists():
        raise ValueError(f"path {source} does not exist")
    source = source.resolve()
    client, samples = read_client_source(source.name, source, source.parent, encoding=encoding, readers=TEXT_READERS)
    raise_for_problems(DataReport(str(source), encoding, tuple(TEXT_READERS), (client,)))
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
