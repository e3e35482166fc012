"""The README's picture of `fedlm report`: render a run's report and save a PNG of it with headless Chromium.

Usage
    python benchmarks/report_screenshot.py [RUN_DIR] [--out docs/img/report.png]

Without RUN_DIR it makes a tiny run first (the tiny random model, 5 rounds, user-level DP
with a target ε, so every section of the report has something in it) in a temporary
directory. The report is written next to the PNG's run (RUN_DIR/report.html, replaced) and
the screenshot shows the top of the page, 1800 x 1650 CSS pixels (--width, --height). Needs selenium, chromium
and chromedriver (Debian: apt install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_DP_RUN = [  # 5 rounds, Poisson sampling with DP: ε per round against a target of 1.5
    "--model", "tiny", "--rounds", "5", "--seq-len", "64", "--local-steps", "3", "-q",
    "--set", "federation.sampling=poisson", "--set", "federation.sample_rate=0.01",
    "--set", "strategy.clip_norm=1", "--set", "strategy.weighting=uniform",
    "--set", "privacy.noise_multiplier=0.8", "--set", "privacy.target_epsilon=1.5",
]


def fedlm(*args: str) -> None:
    subprocess.run([sys.executable, "-c", "from fedlm.cli.main import app; app()", *args], check=True, cwd=REPO)


def make_tiny_run(out: Path) -> Path:
    fedlm("simulate", "--out", str(out), *TINY_DP_RUN)
    return out


def screenshot(report: Path, png: Path, *, width: int, height: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from browser import save_screenshot

    save_screenshot(report.resolve().as_uri(), png, width=width, height=height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="A run directory; a tiny DP run is made when absent.")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "report.png")
    parser.add_argument("--width", type=int, default=1800)
    parser.add_argument("--height", type=int, default=1650)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedlm-report-") as tmp:
        run_dir = args.run_dir or make_tiny_run(Path(tmp) / "tiny-dp-run")
        report = run_dir / "report.html"
        fedlm("report", str(run_dir), "--out", str(report), "--overwrite")
        screenshot(report, args.out, width=args.width, height=args.height)
    print(args.out)


if __name__ == "__main__":
    main()
