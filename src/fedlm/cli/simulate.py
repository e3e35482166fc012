"""`fedlm simulate`: a federated run in one process, from a TOML config plus overrides."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedlm.config import ConfigError, RunConfig, load_config, parse_override
from fedlm.sim.rundir import CONFIG_FILE

# fedlm.sim.run (torch, PEFT) is imported when a run starts: `fedlm --help` stays fast.

console = Console()

# Each shortcut flag maps to one config key; any key can also be set with --set section.key=value.
SHORTCUTS = {
    "model": ("model", "name"),
    "rounds": ("federation", "rounds"),
    "clients_per_round": ("federation", "clients_per_round"),
    "local_steps": ("client", "local_steps"),
    "batch_size": ("client", "batch_size"),
    "lr": ("client", "lr"),
    "seq_len": ("data", "seq_len"),
    "seed": ("run", "seed"),
    "executor": ("simulation", "executor"),
    "workers": ("simulation", "workers"),
}


def collect_overrides(shortcuts: dict[str, Any], data: Path | None, sets: list[str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for text in sets:
        section, key, value = parse_override(text)
        overrides.setdefault(section, {})[key] = value
    for flag, value in shortcuts.items():
        if value is not None:
            section, key = SHORTCUTS[flag]
            overrides.setdefault(section, {})[key] = value
    if data is not None:
        overrides.setdefault("data", {}).update(source="folder", path=str(data))
    return overrides


def resolve_config(config_file: Path | None, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    """The file's settings with the flags' on top, checked together: one ConfigError lists every problem."""
    return load_config(config_file, overrides)


def site_table(base: dict[str, Any], final: dict[str, Any], version: int) -> Table:
    """Per-site perplexity, base and final, with the mean over sites and the worst site."""
    table = Table(title="per site (perplexity on each site's held-out split)")
    for column in ("site", "base", f"global v{version}"):
        table.add_column(column, justify="right")
    for site in sorted(final["by_site"]):
        table.add_row(escape(site), f"{base['by_site'][site]['perplexity']:.2f}", f"{final['by_site'][site]['perplexity']:.2f}")
    table.add_row("mean over sites", f"{base['mean_perplexity']:.2f}", f"{final['mean_perplexity']:.2f}")
    table.add_row(f"worst ({escape(str(final['worst_site']))})", f"{base['worst_perplexity']:.2f}", f"{final['worst_perplexity']:.2f}")
    return table


def print_result(summary: dict[str, Any], out: Path) -> None:
    instruction = summary.get("task") == "instruction"
    what = "responses" if instruction else "text"
    per_site = summary.get("eval_mode") == "per_site"
    whose = "every site's own held-out" if per_site else "evaluation clients' test"
    table = Table(title=f"held-out evaluation ({whose} {what}, pooled)" if per_site else f"held-out evaluation ({whose} {what})")
    choices = "choice_accuracy" in (summary.get("base") or {})
    ranking = "recall_at_10" in (summary.get("base") or {})
    classify = summary.get("task") == "classify"
    columns = (["model", "loss", "recall@10", "MRR@10", "top-1 accuracy"] if ranking else ["model", "loss", "accuracy"]
               if classify else
               ["model", "loss", "perplexity", "next-token accuracy"] + (["multiple choice", "chance"] if choices else []))
    for column in columns:
        table.add_column(column, justify="right")
    for label, key in (("base", "base"), (f"global v{summary['version']}", "final")):
        row = summary.get(key)
        if row and classify:
            table.add_row(label, f"{row['loss']:.4f}", f"{row['accuracy']:.3f}")
        elif row and ranking:
            table.add_row(label, f"{row['loss']:.4f}", f"{row['recall_at_10']:.3f}", f"{row['mrr_at_10']:.3f}",
                          f"{row['accuracy']:.3f}")
        elif row:
            cells = [label, f"{row['loss']:.4f}", f"{row['perplexity']:.2f}", f"{row['accuracy']:.3f}"]
            if choices:
                cells += [f"{row['choice_accuracy']:.3f} of {row['choice_questions']}", f"{row['choice_chance']:.3f}"]
            table.add_row(*cells)
    console.print(table)
    if per_site and summary.get("final_sites"):
        console.print(site_table(summary["base_sites"], summary["final_sites"], summary["version"]))
    for what, key in (("training data", "training_data"), ("evaluation data", "eval_data")):
        counts = summary.get(key) or {}
        if counts.get("truncated") or counts.get("dropped"):
            console.print(f"{what}: {counts['truncated']} samples cut at data.seq_len, {counts['dropped']} dropped "
                          + ("(documents of one sentence give no inverse-cloze pair)" if ranking else "(data.overlong)"))
    if "epsilon" in summary:
        console.print(f"user-level DP: epsilon = {summary['epsilon']:.3f} at delta = {summary['delta']:.3g}")
    if "stop_reason" in summary:
        console.print(f"[yellow]stopped early:[/] {summary['stop_reason']}")
    console.print(f"run directory: {out}  (adapter: {out / summary['adapter_dir']}, {summary['seconds']:.0f} s)")


def simulate_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML run config; every setting has a default."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/<timestamp>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Reuse an --out that already holds a run."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last completed round "
                                "(its config.toml, plus any overrides such as --rounds)."),
    model: str | None = typer.Option(None, help="model.name: 'smollm2', 'tiny', a .gguf file or a local HF dir."),
    rounds: int | None = typer.Option(None, help="federation.rounds"),
    clients_per_round: int | None = typer.Option(None, help="federation.clients_per_round"),
    local_steps: int | None = typer.Option(None, help="client.local_steps"),
    batch_size: int | None = typer.Option(None, help="client.batch_size"),
    lr: float | None = typer.Option(None, help="client.lr"),
    seq_len: int | None = typer.Option(None, help="data.seq_len"),
    seed: int | None = typer.Option(None, help="run.seed"),
    executor: str | None = typer.Option(None, help="simulation.executor: 'serial', 'processes' or 'ray' (needs the ray extra)."),
    workers: int | None = typer.Option(None, help="simulation.workers: processes or Ray actors, each with its own model; 0 = one per core."),
    data: Path | None = typer.Option(None, help="A folder of per-client text (sets data.source = 'folder')."),
    set_: list[str] = typer.Option([], "--set", help="Any setting as section.key=value (repeatable), e.g. --set strategy.server_lr=0.5"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    dashboard: bool = typer.Option(False, "--dashboard", help="Serve a live dashboard of the run on this machine "
                                   "(loopback only, at a random URL printed at the start) until the run ends."),
    dashboard_port: int | None = typer.Option(None, "--dashboard-port", help="The dashboard's port (default: a free one)."),
) -> None:
    """Simulate federated LoRA fine-tuning (clients in this process, or on --executor workers) and write a run directory.

    Writes config.toml, metrics.jsonl (one line a round), summary.json and adapter/ (PEFT
    format). Settings: see `fedlm config defaults` and the README.
    """
    from fedlm.sim.run import run_simulation

    shortcuts = dict(model=model, rounds=rounds, clients_per_round=clients_per_round, local_steps=local_steps,
                     batch_size=batch_size, lr=lr, seq_len=seq_len, seed=seed, executor=executor, workers=workers)
    if resume and (out is None or config is not None):
        console.print("[red]error:[/] --resume takes the run directory as --out, and its own config.toml (no --config)")
        raise typer.Exit(2)
    try:
        base_file = out / CONFIG_FILE if resume else config
        run_config = resolve_config(base_file, collect_overrides(shortcuts, data, set_))
    except ConfigError as err:
        console.print(f"[red]config error:[/] {escape(str(err))}")  # a value may look like Rich markup
        raise typer.Exit(2) from None
    if dashboard_port is not None and not dashboard:
        console.print("[red]error:[/] --dashboard-port needs --dashboard")
        raise typer.Exit(2)
    out = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop_dashboard = start_dashboard(out, dashboard_port or 0) if dashboard else None
    try:
        if quiet:
            summary = run_simulation(run_config, out, overwrite=overwrite, resume=resume)
        else:
            from fedlm.cli.progress import RichReporter

            with RichReporter(console, task_kind=run_config.task.kind) as reporter:
                summary = run_simulation(run_config, out, overwrite=overwrite, reporter=reporter, resume=resume)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    finally:
        if stop_dashboard is not None:  # also on Ctrl-C: the port is free again when the command returns
            stop_dashboard()
            console.print(f"dashboard stopped; `fedlm report {escape(str(out))}` writes the run's report", highlight=False)
    print_result(summary, out)


def start_dashboard(out: Path, port: int) -> Callable[[], None]:
    """Serve the live dashboard of run directory `out` on loopback; returns the function that stops it."""
    from fedlm.dashboard.local import serve_run_dir

    try:
        url, stop = serve_run_dir(out, port=port)
    except OSError as err:  # the port is taken, say
        console.print(f"[red]error:[/] the dashboard could not listen on port {port}: {escape(err.strerror or str(err))}")
        raise typer.Exit(2) from None
    console.print(f"live dashboard (this machine only, until the run ends): {url}", highlight=False, soft_wrap=True)
    return stop
