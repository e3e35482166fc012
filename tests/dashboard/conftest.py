"""Dashboard fixtures: the headless Chromium of tests/browser.py, and the report tests' markup reader on the path
(the tiny service run is in tiny_service.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from browser import browser  # noqa: F401  (the headless Chromium fixture, from tests/browser.py)

sys.path.append(str(Path(__file__).resolve().parents[1] / "report"))  # report_markup: read points and tables back
