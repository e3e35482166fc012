"""`fedlm privacy`: the epsilon of a planned run, the least noise that meets a budget, or a design.

`epsilon` and `calibrate` assume Poisson sampling of clients at rate q for every round (DP-FedAvg,
McMahan et al. 2018, arXiv:1710.06963); epsilon comes from dp-accounting (see
fedlm.privacy.accountant). `plan` compares designs before any compute (see fedlm.privacy.design).
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import asdict

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


app = typer.Typer(help="Privacy accounting: epsilon of a plan, the noise a budget needs, or a DP design.",
                  no_args_is_help=True)
console = Console()

SAMPLE_RATE = typer.Option(..., "--sample-rate", help="q: the chance that each client joins a round (Poisson).")
ROUNDS = typer.Option(..., "--rounds", help="Number of rounds.")
DELTA = typer.Option(..., "--delta", help="The DP delta; below 1 / number of clients.")
ACCOUNTANT = typer.Option("rdp", "--accountant", help="'rdp' (Renyi DP) or 'pld' (privacy loss distributions).")
JSON = typer.Option(False, "--json", help="Print one JSON object instead of a sentence.")

# The library names its arguments; the user typed flags.
_FLAGS = {name: "--" + name.replace("_", "-") for name in
          ("noise_multiplier", "target_epsilon", "sample_rate", "rounds", "delta", "accountant", "tolerance")}
_PLAN_FLAGS = {**_FLAGS, "target_epsilon": "--epsilon", "clip_norm": "--clip",
               "update_norm_share": "--update-norm-share", "clients": "--clients", "params": "--params",
               "cohort": "--cohort", "bands": "--bands"}


@app.command("epsilon")
def epsilon_command(
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", help="z: noise std / clip norm."),
    sample_rate: float = SAMPLE_RATE,
    rounds: int = ROUNDS,
    delta: float = DELTA,
    accountant: str = ACCOUNTANT,
    as_json: bool = JSON,
) -> None:
    """Print epsilon after ROUNDS rounds of Poisson-sampled Gaussian noise."""
    from fedlm.privacy.accountant import epsilon as epsilon_after  # dp-accounting loads only when used
    eps = _or_exit(lambda: epsilon_after(
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, rounds=rounds, delta=delta, accountant=accountant))
    if as_json:
        print(json.dumps({"noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "rounds": rounds,
                          "delta": delta, "accountant": accountant, "epsilon": eps}))
    else:
        print(f"epsilon = {eps:.4f} at delta = {delta:g} after {rounds} rounds "
              f"(noise multiplier {noise_multiplier:g}, sample rate {sample_rate:g}, {accountant} accountant)")


@app.command("calibrate")
def calibrate_command(
    target_epsilon: float = typer.Option(..., "--target-epsilon", help="The privacy budget epsilon."),
    sample_rate: float = SAMPLE_RATE,
    rounds: int = ROUNDS,
    delta: float = DELTA,
    accountant: str = ACCOUNTANT,
    as_json: bool = JSON,
) -> None:
    """Print the smallest noise multiplier whose epsilon after ROUNDS rounds is within the target."""
    from fedlm.privacy.accountant import epsilon as epsilon_after
    from fedlm.privacy.calibrate import calibrate_noise
    z = _or_exit(lambda: calibrate_noise(
        target_epsilon=target_epsilon, sample_rate=sample_rate, rounds=rounds, delta=delta, accountant=accountant))
    eps = epsilon_after(noise_multiplier=z, sample_rate=sample_rate, rounds=rounds, delta=delta, accountant=accountant)
    if as_json:
        print(json.dumps({"target_epsilon": target_epsilon, "sample_rate": sample_rate, "rounds": rounds,
                          "delta": delta, "accountant": accountant, "noise_multiplier": z, "epsilon": eps}))
    else:
        print(f"noise multiplier {z:.4f} gives epsilon = {eps:.4f} <= {target_epsilon:g} at delta = {delta:g} "
              f"after {rounds} rounds (sample rate {sample_rate:g}, {accountant} accountant)")


@app.command("plan")
def plan_command(
    clients: int = typer.Option(..., "--clients", help="N: the clients (users) that hold data."),
    rounds: int = typer.Option(..., "--rounds", help="T: rounds of training."),
    params: int = typer.Option(..., "--params", help="P: the trained coordinates in each update (e.g. LoRA's)."),
    target_epsilon: float = typer.Option(..., "--epsilon", help="The privacy budget epsilon for the whole run."),
    delta: float | None = typer.Option(None, "--delta", help="The DP delta; default 1 / N^1.1, as fedlm runs use."),
    clip_norm: float = typer.Option(1.0, "--clip", help="C: the clip norm of each client's update."),
    cohort: int | None = typer.Option(None, "--cohort", help="K: expected clients per round for Poisson sampling."),
    sample_rate: float | None = typer.Option(None, "--sample-rate", help="q: Poisson sampling rate (or --cohort)."),
    update_norm_share: float = typer.Option(
        1.0, "--update-norm-share", help="rho: a clipped update's norm as a share of C (1.0: the most signal)."),
    bands: int | None = typer.Option(None, "--bands", help="b: bands of the MF factorization (default about N / K)."),
    accountant: str = typer.Option("pld", "--accountant", help="Poisson mode: 'pld' (tight) or 'rdp' (faster)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Compare DP designs before spending compute: z, noise on the mean and predicted SNR per mode."""
    from fedlm.privacy.design import make_design
    slow = (cohort is not None or sample_rate is not None) and accountant == "pld"
    message = "calibrating the Poisson mode with the PLD accountant (seconds to a minute; --accountant rdp is faster)"
    with Console(stderr=True).status(message) if slow and not as_json else nullcontext():
        design = _or_exit(lambda: make_design(
            clients=clients, rounds=rounds, params=params, target_epsilon=target_epsilon, delta=delta,
            clip_norm=clip_norm, cohort=cohort, sample_rate=sample_rate, update_norm_share=update_norm_share,
            bands=bands, accountant=accountant), _PLAN_FLAGS)
    if as_json:
        print(json.dumps({
            "clients": design.clients, "rounds": design.rounds, "params": design.params,
            "target_epsilon": design.target_epsilon, "delta": design.delta, "delta_is_default": delta is None,
            "clip_norm": design.clip_norm, "update_norm_share": design.update_norm_share,
            "accountant": design.accountant, "mu": design.mu, "modes": [asdict(mode) for mode in design.modes],
            "recommended": design.recommended.mode, "notes": list(design.notes)}))
    else:
        _print_design(design, delta_is_default=delta is None)


_MODE_NAMES = {"poisson": "DP-FedAvg, Poisson sampling", "full": "full participation",
               "banded_mf": "banded MF-DP-FTRL"}
_MODE_LABELS = {"poisson": "poisson", "full": "full", "banded_mf": "MF"}


def _print_design(design, *, delta_is_default: bool) -> None:
    table = Table(title=f"DP designs: N={design.clients:,} clients, T={design.rounds:,} rounds, "
                        f"P={design.params:,} coordinates, epsilon={design.target_epsilon:g}",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    for column in ("mode", "clients", "z", "eps", "noise std", "noise norm", "SNR", "run SNR"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in design.modes:
        name = _MODE_LABELS[mode.mode] + (f" b={mode.bands}" if mode.mode == "banded_mf" else "")
        table.add_row(name, f"{mode.cohort:,.6g}", f"{mode.noise_multiplier:.4f}", f"{mode.epsilon:.4f}",
                      f"{mode.std_on_mean:.3e}", f"{mode.noise_norm_on_mean:.4g}", f"{mode.snr:.3f}",
                      f"{mode.run_snr:.3f}")
    console.print(table)
    source = "default 1 / N^1.1" if delta_is_default else "given"
    lines = [
        f"delta = {design.delta:.4g} ({source}); mu = {design.mu:.4f} (Gaussian DP of the budget); "
        f"clip norm C = {design.clip_norm:g}",
        f"rho = {design.update_norm_share:g}: a clipped update's norm as a share of C"
        + (" (default 1.0, the most signal a client can send; --update-norm-share)"
           if design.update_norm_share == 1.0 else ""),
        "clients: per round (expected); eps: the accountant's epsilon at z; noise std and norm: the noise on each "
        "coordinate of the mean update and its expected norm; SNR = rho C / noise norm, per round; run SNR = "
        "sqrt(T) x that (T aligned rounds; under full participation mu N rho / sqrt(P)).",
    ]
    for mode in design.modes:
        if mode.mode == "poisson":
            lines.append(f"poisson: each client joins with q = {mode.sample_rate:.4g}; z calibrated with the "
                         f"{design.accountant} accountant.")
        if mode.mode == "full":
            lines.append("full: every client every round; z = sqrt(T) / mu exactly, checked by the PLD accountant.")
        if mode.mode == "banded_mf":
            lines.append(
                f"MF: {mode.bands} cyclic groups, each trains once every {mode.bands} rounds; a {mode.bands}-banded "
                f"Toeplitz factorization; z is the noise on C x; prefix-sum error {mode.error_ratio:.3f} x independent "
                "noise at the same participation; noise std is the independent-noise equivalent.")
    lines += list(design.notes)
    best = design.recommended
    lines.append(f"recommended: {_MODE_NAMES[best.mode]} (highest predicted SNR, {best.snr:.3f} per round)"
                 + ("; below 1 the noise outweighs even a fully aligned signal" if best.snr < 1 else ""))
    for line in lines:
        console.print(escape(line))


def _or_exit(compute, flags: dict[str, str] = _FLAGS):
    """Run `compute`; a ValueError becomes one line on stderr naming the flag, and exit code 2."""
    try:
        return compute()
    except ValueError as err:
        message = str(err)
        for name, flag in flags.items():
            message = re.sub(rf"\b{name}\b", flag, message)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None
