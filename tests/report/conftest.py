"""Report fixtures: one tiny per-site run with user-level DP (shared by the CLI and browser tests), and the browser."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import browser  # noqa: F401  (the headless Chromium fixture, from tests/browser.py)

from fedlm.config import config_from_dict
from fedlm.sim.run import run_simulation

SITES = ("north", "south", "east")
TARGET_EPSILON = 100.0


def site_run(root: Path, *, dp: bool) -> Path:
    """3 rounds over the sites' folders: evaluated per site without DP; with DP, on one held-out site that never
    trains (DP refuses per-site figures of training sites, which would be released without noise)."""
    for site in SITES:
        (root / "sites" / site).mkdir(parents=True)
        (root / "sites" / site / "notes.txt").write_text(
            "\n\n".join(f"{site} ward round {i}: the patient rested and ate well." for i in range(12)))
    settings = {
        "model": {"name": "tiny"}, "data": {"source": "folder", "path": str(root / "sites"), "seq_len": 32},
        "federation": {"rounds": 3, "clients_per_round": 2}, "client": {"local_steps": 2, "batch_size": 2, "lr": 0.05},
        "eval": {"mode": "per_site", "max_sequences": 2},
    }
    if dp:
        settings |= {"eval": {"mode": "held_out", "clients": 1, "max_sequences": 2},
                     "strategy": {"clip_norm": 1.0, "weighting": "uniform"},
                     "privacy": {"noise_multiplier": 0.8, "target_epsilon": TARGET_EPSILON}}
    run_simulation(config_from_dict(settings), root / "run")
    return root / "run"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DP run over the sites' folders (epsilon against its target, one held-out site)."""
    return site_run(tmp_path_factory.mktemp("report"), dp=True)


@pytest.fixture(scope="session")
def sites_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same sites without DP, evaluated per site: the per-site charts."""
    return site_run(tmp_path_factory.mktemp("report-sites"), dp=False)
