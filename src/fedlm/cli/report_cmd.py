"""`fedlm report RUN_DIR [--out report.html]`: one self-contained HTML file of a run's metrics, per round.

RUN_DIR is a run directory that `fedlm simulate` wrote (metrics.jsonl, with config.toml
and summary.json when present) or an output directory of `fedlm experiment` (results.json).
The rendering is fedlm.report's pure functions; this module reads the files, refuses what
it cannot read (naming the file and line) and writes OUT whole or not at all: a temporary
sibling renamed into place. No torch here.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
RESULTS_FILE = "results.json"  # fedlm.experiment.outputs.RESULTS_JSON, named here so the command loads no experiment code
REPORT_FILE = "report.html"


def report_command(
    run_dir: Path = typer.Argument(..., help="A run directory (`fedlm simulate`) or an experiment's output (`fedlm experiment`)."),
    out: Path | None = typer.Option(None, "--out", "-o", help=f"The HTML file to write (default RUN_DIR/{REPORT_FILE})."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write one self-contained HTML report (inline SVG plots per round, tables of versions and alerts) of RUN_DIR."""
    out = out if out is not None else run_dir / REPORT_FILE
    try:
        check_out(out, overwrite=overwrite)
        html = render(run_dir)
        write_atomically(out, html)
    except (ValueError, OSError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(str(out), highlight=False)


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse a directory, or an existing file unless `overwrite`; creates nothing."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name the HTML file to write")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --out or pass --overwrite")


def render(run_dir: Path) -> str:
    """The report's HTML for a run directory or an experiment's output directory."""
    from fedlm.sim.rundir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

    if not run_dir.exists():
        raise ValueError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory")
    name = run_dir.resolve().name
    if (run_dir / METRICS_FILE).is_file():
        from fedlm.report.records import parse_metrics_lines
        from fedlm.report.run_report import render_run_report

        records = parse_metrics_lines(read_text(run_dir / METRICS_FILE), str(run_dir / METRICS_FILE))
        config = read_toml(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else {}
        summary = read_json(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else None
        return render_run_report(records, config, summary, title=f"fedlm run report: {name}")
    if (run_dir / RESULTS_FILE).is_file():
        from fedlm.report.experiment_report import render_experiment_report

        return render_experiment_report(read_json(run_dir / RESULTS_FILE), title=f"fedlm experiment report: {name}")
    raise ValueError(f"{run_dir} holds neither {METRICS_FILE} (a `fedlm simulate` run) nor {RESULTS_FILE} "
                     "(a `fedlm experiment` output)")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start})") from None


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML ({err})") from None


def write_atomically(out: Path, text: str) -> None:
    """Write a hidden temporary sibling of `out`, give it the usual file mode, and rename it into place."""
    from fedlm.models.output_dir import current_umask

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the report from the rest of a team
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
