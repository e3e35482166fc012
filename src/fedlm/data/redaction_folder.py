"""A data folder redacted into a new folder: same relative paths, same formats, the input left as it was.

Every file a run would read (fedlm.data.folders: .txt and .md under a client folder, .jsonl
anywhere, .csv, .parquet) is rewritten with its PII replaced (fedlm.data.redaction):
paragraphs of text files keep their blank lines; every string value of a JSONL record
(a "text", every message's content, a prompt), every cell of a CSV row after the header
and every string column of a Parquet file is redacted. Files a run would not read (hidden,
unknown extension, top-level files that are no client) are not copied, and are listed.

All or nothing: the output is written to a temporary sibling folder and renamed into place
only when every file was redacted; a binary or undecodable file, or a malformed record, is
refused with its path and reason (never its text) and nothing is left behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedlm.data.folders import CLIENT_FILE, NOT_A_CLIENT, check_folder, walk_folder
from fedlm.data.redaction import redact_text
from fedlm.data.textfiles import (
    SNIFF_BYTES,
    TEXT_READERS,
    FileRefusal,
    binary_reason,
    check_encoding,
    codec_name,
    decoder_name,
    refusing_undecodable,
)

REDACTED, SKIPPED, REFUSED = "redacted", "skipped", "refused"
_PARAGRAPHS = re.compile(r"(\n[ \t\f\v]*\n)")


@dataclass(frozen=True)
class FileOutcome:
    path: str  # relative to the input folder
    status: str  # REDACTED, SKIPPED or REFUSED
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # entity -> values replaced in this file


@dataclass(frozen=True)
class RedactionOutcome:
    files: tuple[FileOutcome, ...]
    written: bool  # the output folder was created

    def counts(self) -> Counter:
        total: Counter = Counter()
        for outcome in self.files:
            total.update(outcome.counts)
        return total

    def refused(self) -> tuple[FileOutcome, ...]:
        return tuple(f for f in self.files if f.status == REFUSED)


@dataclass(frozen=True)
class Redaction:
    """What to replace and how (redaction.entities, redaction.placeholder), and the files' encoding."""

    entities: tuple[str, ...]
    style: str = "type"
    encoding: str = "utf-8"

    def text(self, value: str, counts: Counter) -> str:
        redacted, found = redact_text(value, self.entities, self.style)
        counts.update(found)
        return redacted

    def value(self, value: object, counts: Counter) -> object:
        """Every string inside a JSON value redacted (keys kept)."""
        if isinstance(value, str):
            return self.text(value, counts)
        if isinstance(value, list):
            return [self.value(item, counts) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item, counts) for key, item in value.items()}
        return value


def check_paths(source: Path, target: Path, *, overwrite: bool) -> None:
    """ValueError when OUT is IN, lies inside it or holds it, or is a non-empty folder without `overwrite`."""
    check_folder(source)
    src, out = source.resolve(), target.resolve()
    if out == src or src in out.parents:
        raise ValueError(f"OUT {target} lies inside IN {source}: choose a folder outside it")
    if out in src.parents:
        raise ValueError(f"OUT {target} holds IN {source}: choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT {target} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"OUT {target} exists and is not empty; pass --overwrite to replace it")


def read_text(path: Path, encoding: str) -> str:
    with path.open("rb") as file:
        found = binary_reason(file.read(SNIFF_BYTES), encoding)
    if found is not None:
        raise FileRefusal(path, found[0], offset=found[1])
    with refusing_undecodable(path, encoding):
        return path.read_bytes().decode(decoder_name(encoding))


def redact_paragraphs(text: str, redaction: Redaction, counts: Counter) -> str:
    """Each paragraph redacted on its own, as a run reads it; the blank lines between kept."""
    pieces = _PARAGRAPHS.split(text)
    return "".join(piece if i % 2 else redaction.text(piece, counts) for i, piece in enumerate(pieces))


def redact_jsonl(path: Path, text: str, redaction: Redaction, counts: Counter) -> str:
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            lines.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FileRefusal(path, f"not valid JSON ({error.msg})", line=number) from None
        lines.append(json.dumps(redaction.value(record, counts), ensure_ascii=False))
    return "\n".join(lines)


def redact_csv(path: Path, text: str, redaction: Redaction, counts: Counter) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for number, row in enumerate(reader):
            writer.writerow(row if number == 0 else [redaction.text(cell, counts) for cell in row])
    except csv.Error as error:
        raise FileRefusal(path, f"not valid CSV ({error})", line=reader.line_num) from None
    return out.getvalue()


def redact_parquet(path: Path, target: Path, redaction: Redaction, counts: Counter) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FileRefusal(path, "redacting Parquet needs pyarrow, which is not installed (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError):
        raise FileRefusal(path, "not a readable Parquet file") from None
    for index, column in enumerate(table.schema):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values = [None if v is None else redaction.text(v, counts) for v in table.column(index).to_pylist()]
            table = table.set_column(index, column, pa.array(values, type=column.type))
    pq.write_table(table, target)


def redact_file(path: Path, target: Path, redaction: Redaction) -> Counter:
    """Write `path` redacted to `target`, in the same format and encoding; FileRefusal when it cannot be read."""
    counts: Counter = Counter()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        redact_parquet(path, target, redaction, counts)
        return counts
    text = read_text(path, redaction.encoding)
    rewrite = {".jsonl": redact_jsonl, ".csv": redact_csv}.get(suffix)
    out = rewrite(path, text, redaction, counts) if rewrite else redact_paragraphs(text, redaction, counts)
    target.write_bytes(out.encode(codec_name(redaction.encoding)))
    return counts


def skip_reason(relative: Path) -> str | None:
    suffix = relative.suffix.lower()
    if len(relative.parts) == 1 and suffix != CLIENT_FILE:
        return NOT_A_CLIENT
    if suffix not in TEXT_READERS:
        return f"unknown extension {suffix}" if suffix else "no extension"
    return None


def redact_into(source: Path, staging: Path, redaction: Redaction) -> list[FileOutcome]:
    """Every file of `source` redacted into `staging` (same relative paths), or listed as skipped or refused."""
    outcomes = []
    for path, skip in walk_folder(source):
        relative = path.relative_to(source)
        reason = skip or skip_reason(relative) or ("" if path.is_file() else "not a regular file")
        if reason:
            outcomes.append(FileOutcome(relative.as_posix(), SKIPPED, reason))
            continue
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            counts = redact_file(path, target, redaction)
        except FileRefusal as error:
            where = f"line {error.line}: " if error.line is not None else ""
            outcomes.append(FileOutcome(relative.as_posix(), REFUSED, where + error.reason))
            continue
        except OSError as error:
            outcomes.append(FileOutcome(relative.as_posix(), REFUSED, f"cannot be read ({error.strerror})"))
            continue
        outcomes.append(FileOutcome(relative.as_posix(), REDACTED, "", dict(counts)))
    return outcomes


def redact_folder(source: Path, target: Path, redaction: Redaction, *, overwrite: bool = False) -> RedactionOutcome:
    """`source` redacted into `target`, all or nothing; ValueError for bad paths (nothing written then)."""
    source, target = Path(source), Path(target)
    check_encoding(redaction.encoding)
    check_paths(source, target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.redacting-", dir=target.parent))
    try:
        outcomes = tuple(redact_into(source, staging, redaction))
        if any(o.status == REFUSED for o in outcomes):
            return RedactionOutcome(outcomes, written=False)
        replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return RedactionOutcome(outcomes, written=True)


def replace_folder(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing `target` is moved aside first and removed after."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, aside / "old")
    os.replace(staging, target)
    shutil.rmtree(aside)


def outcome_dict(outcome: RedactionOutcome, entities: Sequence[str]) -> dict:
    """For `--json`: counts per entity type, and every file with its status; never a value."""
    counts = outcome.counts()
    return {
        "written": outcome.written,
        "counts": {entity: int(counts.get(entity, 0)) for entity in entities},
        "total": int(sum(counts.values())),
        "files": [{"path": f.path, "status": f.status, "reason": f.reason, "replaced": int(sum(f.counts.values()))}
                  for f in outcome.files],
    }
