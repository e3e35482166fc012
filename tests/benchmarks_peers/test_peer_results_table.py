"""The peer benchmark's table, round summary and case parsing (benchmarks/peers/), on worked numbers."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

PEERS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


@pytest.fixture()
def peers(monkeypatch: pytest.MonkeyPatch):
    """Import the benchmark's modules from their folder, as its scripts do."""
    monkeypatch.syspath_prepend(str(PEERS_DIR))
    names = ("results_table", "round_timing", "run")
    yield {name: importlib.import_module(name) for name in names}
    for name in (*names, "peer_venvs"):
        sys.modules.pop(name, None)


def ok(seconds: float, first: float = 9.0) -> dict:
    return {"status": "ok", "seconds_per_round_median": seconds, "first_round_seconds": first}


def test_table_row_shows_seconds_and_ratios_to_fedlm(peers) -> None:
    # Prepare: the reference figures, fedlm at 0.1 s.
    row = {"clients": 100, "params": 1_000_000, "floor": {"seconds": 0.08},
           "fedlm": ok(0.1), "flower": ok(4.6), "pfl": ok(0.48)}
    # Execute
    lines = peers["results_table"].render_table([row]).splitlines()
    # Assert: 4.6 / 0.1 = 46, 0.48 / 0.1 = 4.8, 0.1 / 0.08 = 1.25.
    assert lines[0].startswith("| N x P | floor s | fedlm s | Flower 1.42 s | pfl 0.6 s |")
    assert lines[2] == "| 100 x 1e6 | 0.08 | 0.1 | 4.6 | 0.48 | 46x | 4.8x | 1.25x |"


def test_missing_or_timed_out_framework_shows_status_and_no_ratio(peers) -> None:
    row = {"clients": 1000, "params": 10_000, "floor": {"seconds": 0.002},
           "fedlm": {"status": "missing"}, "flower": {"status": "timeout"}, "pfl": ok(0.5)}
    line = peers["results_table"].render_table([row]).splitlines()[2]
    assert line == "| 1000 x 1e4 | 0.002 | missing | timeout | 0.5 | - | - | - |"
    firsts = peers["results_table"].render_first_rounds([row])
    assert firsts == "1000 x 1e4: fedlm missing, Flower 1.42 timeout, pfl 0.6 9"


def test_case_label_writes_powers_of_ten_short(peers) -> None:
    label = peers["results_table"].case_label
    assert (label(10, 1_000_000), label(100, 100_000), label(7, 1_500)) == (
        "10 x 1e6", "100 x 1e5", "7 x 1,500")


def test_summary_leaves_the_warm_up_round_out(peers) -> None:
    summary = peers["round_timing"].summarize([5.0, 1.0, 3.0, 2.0])
    assert summary == {"seconds_per_round_median": 2.0, "seconds_per_round_min": 1.0,
                       "first_round_seconds": 5.0, "timed_rounds": 3}
    with pytest.raises(ValueError, match="at least 2"):
        peers["round_timing"].summarize([5.0])


def test_result_line_is_found_among_framework_output(peers) -> None:
    timing = peers["round_timing"]
    stdout = "INFO ray started\nPEER_RESULT {\"a\": 1}\nnoise\nPEER_RESULT {\"a\": 2}\nbye\n"
    assert timing.read_result(stdout) == {"a": 2}
    assert timing.read_result("no result here\n") is None


def test_cases_parse_and_bad_cases_are_refused(peers) -> None:
    parse_cases = peers["run"].parse_cases
    assert parse_cases("10x1e6, 1000X1e4") == [(10, 1_000_000), (1000, 10_000)]
    with pytest.raises(SystemExit, match="bad case '100'"):
        parse_cases("100")
    with pytest.raises(SystemExit, match="at least 1"):
        parse_cases("0x1e3")


def test_global_check_accepts_only_rounds_times_the_constant(peers) -> None:
    check = peers["round_timing"].check_global
    check(3.0, 3.0, 3)  # 3 rounds of +1 from zeros
    with pytest.raises(SystemExit, match="expected every value = 3.0"):
        check(2.0, 3.0, 3)


def test_run_past_its_time_limit_is_killed_and_reported(peers, tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(30)"]
    stdout, entry = peers["run"].run_command(command, 0.3, tmp_path / "sleep.log")
    assert (stdout, entry["status"], entry["limit_seconds"]) == ("", "timeout", 0.3)
