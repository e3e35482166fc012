"""`fedlm data check DIR`: what a run would read, skip and refuse in a data folder, per client, before training.

Reads every file as a run would (same formats, encoding and binary checks) but keeps no
sample; prints file names, counts and reasons, never a file's text. Exit code 0 when the
folder can train, 1 when a file is refused or a client has no sample, 2 for a bad argument.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from fedlm.data.folders import scan_folder
from fedlm.data.report import report_dict, report_summary, report_tables
from fedlm.data.textfiles import RECORD_READERS, TEXT_READERS

app = typer.Typer(help="Check a data folder (data.source = 'folder') before training on it.", no_args_is_help=True)
console = Console()

READERS_BY_KIND = {"causal_lm": TEXT_READERS, "instruction": RECORD_READERS}  # task.kind -> the formats it reads


@app.callback()
def data_group() -> None:
    """Data folders: check one before training (more commands may join `check`)."""


@app.command("check")
def check_command(
    path: Path = typer.Argument(..., help="The data folder: one sub-folder (or <client>.jsonl file) per client."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: every client and every file."),
    encoding: str = typer.Option("utf-8", "--encoding", help="data.encoding: the files' encoding ('cp1252', 'utf-16')."),
    kind: str = typer.Option("causal_lm", "--kind", help="task.kind: 'causal_lm' (text formats) or 'instruction'."),
) -> None:
    """Per client: files read (bytes, samples), skipped (and why) and refused (binary, undecodable, malformed)."""
    if kind not in READERS_BY_KIND:
        typer.echo(f"error: --kind must be one of {', '.join(READERS_BY_KIND)}, got {kind!r}", err=True)
        raise typer.Exit(2)
    try:
        report = scan_folder(path, encoding=encoding, readers=READERS_BY_KIND[kind])
    except ValueError as err:
        typer.echo(f"error: {str(err).replace('data.encoding', '--encoding')}", err=True)
        raise typer.Exit(2) from None
    problems = report.problems()
    if as_json:
        print(json.dumps(report_dict(report)))
    else:
        console.print(*report_tables(report))
        console.print(report_summary(report), markup=False, highlight=False)
        for problem in problems:
            console.print(f"[red]problem:[/] {escape(problem)}", highlight=False)
        if not problems:
            console.print("[green]ok:[/] every client has samples and no file is refused")
    raise typer.Exit(1 if problems else 0)
