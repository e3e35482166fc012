"""`fedlm experiment compare`: federated vs centralized vs local-only at equal compute, from one command."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.console import Console

from fedlm.config import ConfigError
from fedlm.cli.simulate import collect_overrides
from fedlm.experiment.settings import ExperimentSettings, load_files, resolve

app = typer.Typer(help="Experiments that answer a question end to end.", no_args_is_help=True)
console = Console()


def experiment_keys() -> str:
    return ", ".join(f"experiment.{f}" for f in ExperimentSettings.__dataclass_fields__)


@app.command("compare", epilog=f"Comparison settings (--set experiment.key=value): {experiment_keys()}")
def compare_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML run config (model, lora, data, client, eval, run), plus an optional [experiment] table."),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Where results.json, results.md and the plot go."),
    quick: bool = typer.Option(False, "--quick", help="The tiny random model on a handful of clients: seconds, for a smoke test."),
    set_: list[str] = typer.Option([], "--set", help="Any setting as section.key=value (repeatable), "
                                   "including the comparison's own, e.g. --set experiment.rounds=4"),
) -> None:
    """Base, centralized, local-only, FedAvg, FedAdam, DP-FedAvg and 8-bit FedAvg on one model and one budget.

    Every trained method gets the same number of training tokens; all are scored on the
    held-out speakers and on the training clients' own test lines. Writes results.json,
    results.md (the table) and held_out_perplexity.png to --out.
    """
    from fedlm.experiment.compare import run_comparison  # torch and PEFT load only when a comparison runs
    from fedlm.experiment.report import markdown_table, write_outputs
    from fedlm.model_settings import ENCODER_KINDS

    try:
        base, from_file = load_files(config)
        overrides = collect_overrides({}, None, set_)
        overrides["experiment"] = from_file | overrides.get("experiment", {})  # --set wins over the file
        run_config, settings = resolve(base, overrides, quick=quick)
        if run_config.task.kind in ENCODER_KINDS:
            raise ConfigError(f"task.kind: 'fedlm experiment compare' compares language models; task.kind = "
                              f"{run_config.task.kind!r} has its own comparison: python benchmarks/rag_compare.py")
    except ConfigError as err:
        console.print(f"[red]config error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.0f} s[/] {message}", highlight=False)

    try:
        results = run_comparison(run_config, settings, log, on_progress=lambda partial: write_outputs(partial, out))
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    paths = write_outputs(results, out)
    typer.echo(markdown_table(results))
    console.print(f"wrote {paths['json']}, {paths['table']} and {paths['plot']}")
