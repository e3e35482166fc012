"""`fedlm experiment fleet`: synchronous vs quorum vs FedBuff rounds in simulated time, on a fleet with slow clients."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from fedlm.cli.experiment_cmd import app
from fedlm.cli.simulate import collect_overrides
from fedlm.config import ConfigError, apply_overrides
from fedlm.experiment.fleet_settings import QUICK_FLEET, QUICK_RUN, SECTION, FleetSettings, make_fleet_settings
from fedlm.experiment.settings import load_files

console = Console()


def fleet_keys() -> str:
    return ", ".join(f"{SECTION}.{f}" for f in FleetSettings.__dataclass_fields__)


@app.command("fleet", epilog=f"Fleet settings (--set fleet.key=value): {fleet_keys()}")
def fleet_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML run config (model, lora, data, client, eval, run); its [experiment] table is ignored."),
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
    from fedlm.model_settings import ENCODER_KINDS

    try:
        base, _ = load_files(config)
        overrides = collect_overrides({}, None, set_)
        values = overrides.pop(SECTION, {})
        run_config = apply_overrides(apply_overrides(base, QUICK_RUN) if quick else base, overrides)
        settings = make_fleet_settings(values, make_fleet_settings(QUICK_FLEET) if quick else None)
        if run_config.task.kind in ENCODER_KINDS:
            raise ConfigError(f"task.kind: 'fedlm experiment fleet' compares language-model runs; task.kind = "
                              f"{run_config.task.kind!r} is not one")
    except ConfigError as err:
        console.print(f"[red]config error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.0f} s[/] {message}", highlight=False)

    try:
        results = run_fleet(run_config, settings, log)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    paths = write_outputs(results, out)
    typer.echo(markdown_table(results))
    console.print(f"wrote {paths['json']}, {paths['table']} and {paths['plot']}")
