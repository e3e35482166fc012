"""`fedlm privacy`: the epsilon of a planned run, or the least noise that meets a budget.

Both assume Poisson sampling of clients at rate q for every round (DP-FedAvg, McMahan et al.
2018, arXiv:1710.06963); epsilon comes from dp-accounting (see fedlm.privacy.accountant).
"""

from __future__ import annotations

import json
import re

import typer


app = typer.Typer(help="Privacy accounting: epsilon of a plan, or the noise a budget needs.", no_args_is_help=True)

SAMPLE_RATE = typer.Option(..., "--sample-rate", help="q: the chance that each client joins a round (Poisson).")
ROUNDS = typer.Option(..., "--rounds", help="Number of rounds.")
DELTA = typer.Option(..., "--delta", help="The DP delta; below 1 / number of clients.")
ACCOUNTANT = typer.Option("rdp", "--accountant", help="'rdp' (Renyi DP) or 'pld' (privacy loss distributions).")
JSON = typer.Option(False, "--json", help="Print one JSON object instead of a sentence.")

# The library names its arguments; the user typed flags.
_FLAGS = ("noise_multiplier", "target_epsilon", "sample_rate", "rounds", "delta", "accountant", "tolerance")


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


def _or_exit(compute):
    """Run `compute`; a ValueError becomes one line on stderr naming the flag, and exit code 2."""
    try:
        return compute()
    except ValueError as err:
        message = str(err)
        for name in _FLAGS:
            message = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), message)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None
