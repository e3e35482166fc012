"""What loading a data folder read, skipped and refused, per client and per file: checked before training.

A `DataReport` holds counts, file names and reasons only, never a sample's text. It renders
as rich tables (`report_tables`), as a JSON-able dict (`report_dict`) and as one log line
(`report_summary`); `raise_for_problems` stops a run on a refused file or a client with no
samples, listing every one of them in one error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rich.markup import escape
from rich.table import Table

READ, SKIPPED, REFUSED = "read", "skipped", "refused"


@dataclass(frozen=True)
class FileReport:
    """One file (or hidden folder) under the data folder and what loading did with it."""

    path: str  # relative to the data folder, "/"-separated
    status: str  # READ, SKIPPED or REFUSED
    reason: str = ""  # why it was skipped or refused; never quotes the file's text
    bytes: int = 0
    samples: int = 0
    line: int | None = None  # refused: the line at fault, where there is one
    offset: int | None = None  # refused: the byte offset at fault, where there is one

    def describe(self) -> str:
        where = f", line {self.line}" if self.line is not None else ""
        return f"{self.path}{where}: {self.reason}"


@dataclass(frozen=True)
class ClientReport:
    """One client (a top-level sub-folder or <client>.jsonl file) and every file below it."""

    client_id: str
    source: str  # the client's folder or file, relative to the data folder
    files: tuple[FileReport, ...]

    def with_status(self, status: str) -> tuple[FileReport, ...]:
        return tuple(f for f in self.files if f.status == status)

    @property
    def bytes_read(self) -> int:
        return sum(f.bytes for f in self.with_status(READ))

    @property
    def samples(self) -> int:
        return sum(f.samples for f in self.files)

    def problem(self) -> str | None:
        """Why this client cannot train although none of its files was refused: it holds no sample."""
        if self.samples or self.with_status(REFUSED):
            return None
        skipped = Counter(f.reason.split(" (")[0] for f in self.with_status(SKIPPED))
        found = "; ".join(f"{n} skipped: {reason}" for reason, n in sorted(skipped.items()))
        read = len(self.with_status(READ))
        detail = f"{read} file(s) read, none with text" + (f"; {found}" if found else "") if self.files else "no files"
        return f"client {self.client_id!r} ({self.source}) has no non-empty samples ({detail})"


@dataclass(frozen=True)
class DataReport:
    """A data folder's clients, the top-level entries that are no client, and the settings it was read with."""

    path: str
    encoding: str
    formats: tuple[str, ...]  # the extensions read, lower case
    clients: tuple[ClientReport, ...]
    ignored: tuple[FileReport, ...] = ()  # top-level entries that are not clients

    def files(self, status: str) -> tuple[FileReport, ...]:
        below = tuple(f for c in self.clients for f in c.with_status(status))
        return below + tuple(f for f in self.ignored if f.status == status)

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.clients)

    @property
    def bytes_read(self) -> int:
        return sum(c.bytes_read for c in self.clients)

    def problems(self) -> list[str]:
        """One line per refused file and per client left with no samples; empty when the data can train."""
        refused = [f.describe() for f in self.files(REFUSED)]
        return refused + [p for c in self.clients if (p := c.problem()) is not None]


class DataRefused(ValueError):
    """A data folder that cannot train as it is; `.problems` lists every refused file and empty client."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(path, problems)
        self.path, self.problems = path, list(problems)

    def __str__(self) -> str:
        lines = "\n".join(f"  {p}" for p in self.problems)
        return (f"data.path = {self.path}: {len(self.problems)} problem(s), nothing was trained "
                f"(run `fedlm data check {self.path}` for the whole report):\n{lines}")


def raise_for_problems(report: DataReport) -> None:
    """DataRefused listing every problem of `report` at once; nothing when there is none."""
    problems = report.problems()
    if problems:
        raise DataRefused(report.path, problems)


def _file_dict(f: FileReport) -> dict:
    return {"path": f.path, "status": f.status, "reason": f.reason, "bytes": f.bytes, "samples": f.samples,
            "line": f.line, "offset": f.offset}


def report_dict(report: DataReport) -> dict:
    """The report as plain JSON types: totals, then every client with every file."""
    return {
        "path": report.path,
        "encoding": report.encoding,
        "formats": list(report.formats),
        "clients": [
            {"client_id": c.client_id, "source": c.source, "files_read": len(c.with_status(READ)),
             "bytes_read": c.bytes_read, "samples": c.samples, "skipped": len(c.with_status(SKIPPED)),
             "refused": len(c.with_status(REFUSED)), "files": [_file_dict(f) for f in c.files]}
            for c in report.clients
        ],
        "ignored": [_file_dict(f) for f in report.ignored],
        "totals": {"clients": len(report.clients), "files_read": len(report.files(READ)),
                   "bytes_read": report.bytes_read,
                   "samples": report.samples, "skipped": len(report.files(SKIPPED)),
                   "refused": len(report.files(REFUSED))},
        "problems": report.problems(),
    }


def report_summary(report: DataReport) -> str:
    """One line for a log: clients, files read, bytes, samples, skipped, refused."""
    return (f"{report.path}: {len(report.clients)} clients, {len(report.files(READ))} files read "
            f"({report.bytes_read / 1e6:.1f} MB, {report.samples} samples), {len(report.files(SKIPPED))} skipped, "
            f"{len(report.files(REFUSED))} refused (encoding {report.encoding})")


def report_tables(report: DataReport, *, max_files: int = 30) -> tuple[Table, ...]:
    """A table of clients and, when a file was not read, a table of such files and why (at most `max_files` rows)."""
    clients = Table(title=f"{escape(report.path)}  (encoding {report.encoding}; reads {' '.join(report.formats)})")
    for name in ("client", "files read", "MB read", "samples", "skipped", "refused"):
        clients.add_column(name, justify="left" if name == "client" else "right")
    for c in report.clients:
        refused = len(c.with_status(REFUSED))
        clients.add_row(escape(c.client_id), str(len(c.with_status(READ))), f"{c.bytes_read / 1e6:.2f}",
                        str(c.samples) if c.samples else "[red]0[/]", str(len(c.with_status(SKIPPED))),
                        f"[red]{refused}[/]" if refused else "0")
    unread = [*report.files(REFUSED), *report.files(SKIPPED)]
    if not unread:
        return (clients,)
    files = Table(title="files not read")
    for name in ("file", "status", "reason"):
        files.add_column(name)
    for f in unread[:max_files]:
        status = f"[red]{f.status}[/]" if f.status == REFUSED else f.status
        files.add_row(escape(f.path), status, escape(f.describe()[len(f.path) + 2:]))
    if len(unread) > max_files:
        files.add_row(f"... {len(unread) - max_files} more (--json lists every file)", "", "")
    return clients, files
