"""`fedlm experiment`: comparisons that answer a question end to end (compare, fleet, personalize, clusters).

Each command reads a run config (--config, whose optional [experiment] table holds the
command's own settings; `fleet` reads --set fleet.key=value), applies --set on top, refuses the encoder task kinds (these compare
language models' next-token loss), logs timed progress lines, and writes results.json,
results.md and a plot to --out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.console import Console

from fedlm.config import ConfigError, RunConfig
from fedlm.cli.simulate import collect_overrides
from fedlm.experiment.settings import ExperimentSettings, load_files, resolve

app = typer.Typer(help="Experiments that answer a question end to end.", no_args_is_help=True)
console = Console()

Resolve = Callable[..., tuple[RunConfig, Any]]
CONFIG_HELP = "TOML run config (model, lora, data, client, eval, run), plus an optional [experiment] table."
QUICK_HELP = "The tiny random model on a handful of clients: seconds, for a smoke test."
SET_HELP = "Any setting as section.key=value (repeatable), including the experiment's own, e.g. --set experiment.rounds=4"


def experiment_keys(settings: type = ExperimentSettings, section: str = "experiment") -> str:
    """Every key of a comparison's settings table, as --set names it."""
    return ", ".join(f"{section}.{f}" for f in settings.__dataclass_fields__)


def load_experiment(command: str, config: Path | None, set_: list[str], quick: bool, resolver: Resolve,
                    encoder_hint: str = "") -> tuple[RunConfig, Any]:
    """(run config, experiment settings) from the file, the quick preset and --set; exits 2 on a config error."""
    from fedlm.model_settings import ENCODER_KINDS

    try:
        base, from_file = load_files(config)
        overrides = collect_overrides({}, None, set_)
        overrides["experiment"] = from_file | overrides.get("experiment", {})  # --set wins over the file
        run_config, settings = resolver(base, overrides, quick=quick)
        if run_config.task.kind in ENCODER_KINDS:
            raise ConfigError(f"task.kind: 'fedlm experiment {command}' compares language models; task.kind = "
                              f"{run_config.task.kind!r} is an encoder kind{encoder_hint}")
    except ConfigError as err:
        console.print(f"[red]config error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    return run_config, settings


def timed_log() -> Callable[[str], None]:
    """A progress line printer that prefixes the seconds since it was made."""
    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.0f} s[/] {message}", highlight=False)

    return log


def run_and_write(run: Callable[[], dict[str, Any]], write: Callable[[dict[str, Any], Path], dict[str, Path]],
                  table: Callable[[dict[str, Any]], str], out: Path) -> None:
    """Run the experiment, write its outputs, print its table; a refused setting found while running exits 2."""
    try:
        results = run()
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    paths = write(results, out)
    typer.echo(table(results))
    console.print(f"wrote {paths['json']}, {paths['table']} and {paths['plot']}")


@app.command("compare", epilog=f"Comparison settings (--set experiment.key=value): {experiment_keys()}")
def compare_command(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Where results.json, results.md and the plot go."),
    quick: bool = typer.Option(False, "--quick", help=QUICK_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Base, centralized, local-only, FedAvg, FedAdam, DP-FedAvg and 8-bit FedAvg on one model and one budget.

    Every trained method gets the same number of training tokens; all are scored on the
    held-out speakers and on the training clients' own test lines. Writes results.json,
    results.md (the table) and held_out_perplexity.png to --out.
    """
    from fedlm.experiment.compare import run_comparison  # torch and PEFT load only when a comparison runs
    from fedlm.experiment.report import markdown_table, write_outputs

    run_config, settings = load_experiment("compare", config, set_, quick, resolve,
                                           ": its own comparison is python benchmarks/rag_compare.py")
    log = timed_log()
    run_and_write(lambda: run_comparison(run_config, settings, log, on_progress=lambda partial: write_outputs(partial, out)),
                  write_outputs, markdown_table, out)


def personalize_keys() -> str:
    from fedlm.experiment.personalize_settings import PersonalizeSettings

    return experiment_keys(PersonalizeSettings)


@app.command("personalize", epilog=f"Personalization settings (--set experiment.key=value): {personalize_keys()}")
def personalize_command(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    out: Path = typer.Option(Path("runs/personalize"), "--out", "-o", help="Where results.json, results.md and the plot go."),
    quick: bool = typer.Option(False, "--quick", help=QUICK_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Per-client personalization: the FedAvg global, fine-tuning, Ditto, a Reptile-trained global, private layers.

    Every method is scored on each evaluation client's own test text and reported as a
    distribution over clients (mean, median, p90 of per-client loss; share of clients made
    worse than the global). Writes results.json, results.md and per_client_loss.png to --out.
    """
    from fedlm.experiment.personalize import run_personalization
    from fedlm.experiment.personalize_report import markdown_table, write_outputs
    from fedlm.experiment.personalize_settings import resolve_personalize

    run_config, settings = load_experiment("personalize", config, set_, quick, resolve_personalize)
    log = timed_log()
    run_and_write(lambda: run_personalization(run_config, settings, log), write_outputs, markdown_table, out)


def clusters_keys() -> str:
    from fedlm.experiment.clusters_settings import ClustersSettings

    return experiment_keys(ClustersSettings)


@app.command("clusters", epilog=f"Cluster comparison settings (--set experiment.key=value): {clusters_keys()}")
def clusters_command(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    out: Path = typer.Option(Path("runs/clusters"), "--out", "-o", help="Where results.json, results.md and the plot go."),
    quick: bool = typer.Option(False, "--quick", help=QUICK_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """One global vs a global per genre vs IFCA, on the plays, at equal training tokens, scored per genre.

    The same cohorts train every method; each genre's held-out speakers are scored on their own
    test text under the global their method gives them. Writes results.json, results.md and
    per_genre.png to --out.
    """
    from fedlm.experiment.clusters_compare import run_cluster_comparison
    from fedlm.experiment.clusters_report import markdown_table, write_outputs
    from fedlm.experiment.clusters_settings import resolve_clusters

    run_config, settings = load_experiment("clusters", config, set_, quick, resolve_clusters)
    log = timed_log()
    run_and_write(lambda: run_cluster_comparison(run_config, settings, log,
                                                 on_progress=lambda partial: write_outputs(partial, out)),
                  write_outputs, markdown_table, out)


def fleet_keys() -> str:
    from fedlm.experiment.fleet_settings import SECTION, FleetSettings

    return experiment_keys(FleetSettings, SECTION)


@app.command("fleet", epilog=f"Fleet settings (--set fleet.key=value): {fleet_keys()}")
def fleet_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML run config (model, lora, data, client, eval, run)."),
    out: Path = typer.Option(Path("runs/fleet"), "--out", "-o", help="Where results.json, results.md and the plot go."),
    quick: bool = typer.Option(False, "--quick", help="The tiny random model on a fleet of 8: seconds, for a smoke test."),
    set_: list[str] = typer.Option([], "--set", help="Any setting as section.key=value (repeatable), including the "
                                   "fleet's own, e.g. --set fleet.slow_share=0.3"),
) -> None:
    """Synchronous, quorum and FedBuff rounds at equal training tokens: simulated time to a target perplexity.

    A share of the fleet is slow (fleet.slow_share, fleet.slow_factor); each policy folds the
    same number of updates on the virtual clock. Writes results.json, results.md and
    perplexity_vs_simulated_time.png to --out.
    """
    from fedlm.experiment.fleet import run_fleet  # torch and PEFT load only when the experiment runs
    from fedlm.experiment.fleet_report import markdown_table, write_outputs
    from fedlm.experiment.fleet_settings import resolve_fleet

    run_config, settings = load_experiment("fleet", config, set_, quick, resolve_fleet)
    log = timed_log()
    run_and_write(lambda: run_fleet(run_config, settings, log), write_outputs, markdown_table, out)


def dp_keys() -> str:
    from fedlm.experiment.dp_settings import SECTION, DPSettings

    return experiment_keys(DPSettings, SECTION)


@app.command("dp", epilog=f"DP comparison settings (--set dp.key=value): {dp_keys()}")
def dp_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML run config (model, lora, data, client, eval, run)."),
    out: Path = typer.Option(Path("runs/dp"), "--out", "-o", help="Where results.json, results.md and the plot go."),
    quick: bool = typer.Option(False, "--quick", help="The tiny random model on 24 speakers: seconds, for a smoke test."),
    set_: list[str] = typer.Option([], "--set", help="Any setting as section.key=value (repeatable), including the "
                                   "comparison's own, e.g. --set dp.epsilons=[8.0]"),
) -> None:
    """User-level DP on the plays: the fraction of the centralized gain kept per design, adapter and epsilon.

    Full participation, DP-FedAvg with Poisson sampling and banded MF-DP-FTRL, each with LoRA and
    FFA-LoRA, at each dp.epsilons (delta = 1/N^1.1), over every speaker that is not held out; the
    clip norm comes from public data (held-out speakers). Writes results.json, results.md and
    gain_vs_predicted_snr.png to --out, updated after every row.
    """
    from fedlm.experiment.dp_compare import run_dp_comparison  # torch and PEFT load only when the experiment runs
    from fedlm.experiment.dp_report import markdown_table, write_outputs
    from fedlm.experiment.dp_settings import resolve_dp

    run_config, settings = load_experiment("dp", config, set_, quick, resolve_dp)
    log = timed_log()
    run_and_write(lambda: run_dp_comparison(run_config, settings, log,
                                            on_progress=lambda partial: write_outputs(partial, out)),
                  write_outputs, markdown_table, out)
