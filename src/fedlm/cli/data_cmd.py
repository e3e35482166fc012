"""`fedlm data check DIR` and `fedlm data redact IN OUT`: a data folder, checked or redacted, before training.

`check` reads every file as a run would (same formats, encoding and binary checks) but keeps
no sample; prints file names, counts and reasons, never a file's text. Exit code 0 when the
folder can train, 1 when a file is refused or a client has no sample, 2 for a bad argument.

`redact` writes IN's files with their PII replaced into OUT (fedlm.data.redaction_folder),
all or nothing, and prints how many values of each type were replaced, never the values.
Exit code 0 when OUT was written, 1 when a file was refused (nothing written), 2 for a bad argument.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from fedlm.config import REDACTION_ENTITIES
from fedlm.data.folders import scan_folder
from fedlm.data.redaction import check_entities, describe_counts
from fedlm.data.redaction_folder import REDACTED, REFUSED, SKIPPED, Redaction, outcome_dict, redact_folder
from fedlm.data.report import report_dict, report_summary, report_tables
from fedlm.data.textfiles import RECORD_READERS, TEXT_READERS

app = typer.Typer(help="Check a data folder (data.source = 'folder') before training on it.", no_args_is_help=True)
console = Console()

READERS_BY_KIND = {"causal_lm": TEXT_READERS, "instruction": RECORD_READERS}  # task.kind -> the formats it reads


@app.callback()
def data_group() -> None:
    """Data folders: check one before training, or redact its PII into a new folder."""


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


@app.command("redact")
def redact_command(
    source: Path = typer.Argument(..., help="IN: the data folder (one sub-folder or <client>.jsonl file per client)."),
    target: Path = typer.Argument(..., help="OUT: the new folder; must not exist, be empty, or be replaced (--overwrite)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: counts per type and every file."),
    entities: str = typer.Option(",".join(REDACTION_ENTITIES), "--entities",
                                 help="redaction.entities: comma-separated PII types to replace."),
    placeholder: str = typer.Option("type", "--placeholder", help="redaction.placeholder: 'type' (<EMAIL>) or 'redacted'."),
    encoding: str = typer.Option("utf-8", "--encoding", help="data.encoding: the files' encoding ('cp1252', 'utf-16')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
) -> None:
    """Write IN's files with PII replaced by typed placeholders into OUT; IN is left untouched."""
    try:
        chosen = check_entities(e.strip() for e in entities.split(",") if e.strip())
        if placeholder not in ("type", "redacted"):
            raise ValueError(f"--placeholder must be 'type' or 'redacted', got {placeholder!r}")
        outcome = redact_folder(source, target, Redaction(chosen, placeholder, encoding), overwrite=overwrite)
    except ValueError as err:
        typer.echo(f"error: {str(err).replace('data.encoding', '--encoding')}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(outcome_dict(outcome, chosen)))
    else:
        print_redaction(outcome, chosen, target)
    raise typer.Exit(0 if outcome.written else 1)


def print_redaction(outcome, chosen: tuple[str, ...], target: Path) -> None:
    counts = outcome.counts()
    for entry in outcome.files:
        if entry.status != REDACTED:
            colour = "red" if entry.status == REFUSED else "yellow"
            reason = entry.reason.replace("data.encoding", "--encoding")
            console.print(f"[{colour}]{entry.status}:[/] {escape(entry.path)} ({escape(reason)})", highlight=False,
                          soft_wrap=True)
    done = sum(f.status == REDACTED for f in outcome.files)
    skipped = sum(f.status == SKIPPED for f in outcome.files)
    console.print(f"{done} files redacted, {skipped} skipped, {len(outcome.refused())} refused; "
                  f"{describe_counts(counts)}", markup=False, highlight=False, soft_wrap=True)
    for entity in chosen:
        console.print(f"  {entity:<14} {counts.get(entity, 0)}", markup=False, highlight=False)
    if outcome.written:
        console.print(f"[green]ok:[/] written to {escape(str(target))}")
    else:
        console.print("[red]nothing written:[/] a file was refused; fix or remove it and run again")
