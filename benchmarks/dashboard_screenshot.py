"""The README's picture of the coordinator's live dashboard: a tiny service run in progress, seen in headless Chromium.

Usage
    python benchmarks/dashboard_screenshot.py [--out docs/img/dashboard.png] [--width 1800] [--height 1650]

The run is the real coordinator and app (tests/dashboard/tiny_service.py) over a 6-value
"model", with three scripted clients: each moves the global vector toward its own site's
target (a shift that all sites share plus one of its own), and the canary gate's held-out
loss is the squared distance to the sites' mean target. In round 5 one client sends an update 40 times too large: its version is held
(canary margin 0.05) and the monitor flags it. The picture is taken with 6 of 8 rounds done
and round 7 open, so the figures are synthetic; the page is exactly what `fedlm serve` shows
an operator. Needs selenium, chromium and chromedriver (Debian: apt install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SITES = ("north", "south", "east")  # site i's target: the initial vector + COMMON, + SPECIFIC on coordinates 2i and 2i+1
COMMON, SPECIFIC = 2.0, 0.25
ROUNDS, DONE, POISONED_ROUND, STEP = 8, 6, 5, 0.15


def targets(initial: np.ndarray) -> dict[str, np.ndarray]:
    goals = {}
    for i, site in enumerate(SITES):
        goal = initial + COMMON
        goal[2 * i: 2 * i + 2] += SPECIFIC
        goals[site] = goal.astype(np.float32)
    return goals


def play_round(service, round: int, goals: dict[str, np.ndarray], rng: np.random.Generator, *, only=None) -> None:
    """Each site's client sends STEP of the way to its target (plus noise) and its distance there as its train loss."""
    current = service.coordinator.state.global_vector
    deltas, losses = {}, {}
    for site in only or goals:
        delta = STEP * (goals[site] - current) + rng.normal(0, 0.02, current.size).astype(np.float32)
        if round == POISONED_ROUND and site == "east":
            delta *= 40
        deltas[site], losses[site] = delta, round_3(float(np.mean((goals[site] - current) ** 2)) + 0.5)
    service.run_round(round, losses, deltas)


def round_3(value: float) -> float:
    return float(f"{value:.3g}")


def take(url: str, png: Path, *, width: int, height: int) -> None:
    from browser import save_screenshot  # tests/ is on sys.path (main)

    save_screenshot(url, png, width=width, height=height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1800)
    parser.add_argument("--height", type=int, default=1650)
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "dashboard")]
    from tiny_service import INITIAL, OPERATOR, build_tiny_service, served_as

    goals, rng = targets(INITIAL), np.random.default_rng(0)
    mean_goal = np.mean(list(goals.values()), axis=0)
    with tempfile.TemporaryDirectory(prefix="fedlm-dashboard-") as tmp:
        service = build_tiny_service(Path(tmp), rounds=ROUNDS, clients_per_round=len(SITES), margin=0.05,
                                     evaluator=lambda vector: float(np.mean((vector - mean_goal) ** 2)) + 0.5)
        for round in range(1, DONE + 1):
            play_round(service, round, goals, rng)
        play_round(service, DONE + 1, goals, rng, only=["north"])  # round 7 open: one update of three in
        with served_as(service, OPERATOR) as base:
            take(f"{base}/dashboard?refresh=60", args.out, width=args.width, height=args.height)
    print(args.out)


if __name__ == "__main__":
    main()
