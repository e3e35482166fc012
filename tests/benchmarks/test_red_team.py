"""The red-team script (benchmarks/red_team.py): its snapshot diff and table on worked cases, and its quick run
(the plain coordinator's attacks against a real `fedlm serve`, about 40 s on 2 cores) with every row passing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from red_team import markdown, row_order  # noqa: E402
from red_team_lab import TABLES, Row, Snapshot, describe, documented_codes, state_changes  # noqa: E402

# every attack the quick run makes: the plain coordinator without restarts or second processes
QUICK_ROWS = ["1", "4c", "5a", "5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "6f", "7a", "7b", "7c", "8a", "8b",
              "9a", "9b", "9c", "9d", "9e", "10a", "10b", "10c", "10e"]


def snapshot(**tables: set[tuple]) -> Snapshot:
    """A snapshot whose named tables hold these rows (the others empty), one blob, no staging, two audit rows."""
    rows = {name: frozenset(tables.get(name, ())) for name in TABLES}
    return Snapshot(rows, Counter({"registered": 2}), {"ab/cdef": "0" * 64}, ())


def test_state_changes_count_added_changed_and_removed_rows_by_key() -> None:
    # Prepare: tasks are keyed by (round, client): alice's status changes, bob's row goes, carol's comes
    before = snapshot(tasks={("1", "alice", "assigned"), ("1", "bob", "assigned")})
    after = snapshot(tasks={("1", "alice", "accepted"), ("1", "carol", "assigned")})
    after.blobs = {**before.blobs, "12/3456": "1" * 64}
    after.staging = ("staging/x",)
    after.audit = Counter({"registered": 2, "auth_refused": 3})
    # Execute
    changes = state_changes(before, after)
    # Assert
    assert changes == ["tasks +1 ~1 -1", "1 blob(s) new", "staging 0 -> 1 files"]
    assert describe(before, after) == "yes: tasks +1 ~1 -1; 1 blob(s) new; staging 0 -> 1 files (audit +3 auth_refused)"


def test_an_unchanged_state_with_audit_rows_only_is_no_change() -> None:
    # Prepare
    before, after = snapshot(updates={("7",)}), snapshot(updates={("7",)})
    after.audit = Counter({"registered": 2, "update_refused": 1})
    # Execute / Assert
    assert state_changes(before, after) == []
    assert describe(before, after) == "no (audit +1 update_refused)"
    after.blobs = {"ab/cdef": "f" * 64}  # the same name, other bytes
    assert describe(before, after) == "yes: 1 blob(s) altered (audit +1 update_refused)"


def test_the_table_escapes_pipes_and_orders_rows_by_finding() -> None:
    # Prepare
    rows = [Row("10a", "x", "a", "no", "e", "PASS"), Row("S1", "s", "a", "no", "e", "PASS"),
            Row("2b", "y", "|delta| = 3", "no", "e", "FAIL"), Row("2a", "z", "a", "no", "e", "PASS")]
    # Execute
    ordered = sorted(rows, key=row_order)
    table = markdown(ordered).splitlines()
    # Assert
    assert [r.number for r in ordered] == ["2a", "2b", "10a", "S1"]
    assert table[3] == "| 2b | y | \\|delta\\| = 3 | no | e | **FAIL** |"


def test_the_documented_codes_are_read_from_the_error_table() -> None:
    codes = documented_codes()
    assert {"bad_metrics", "crl_unavailable", "staging_full", "wrong_stage", "not_in_stage"} <= codes
    assert "server" not in codes  # backquoted settings in the "when" column are not codes


def test_quick_run_against_a_real_server_passes_every_row(tmp_path) -> None:
    # Prepare / Execute: the script itself, its server in its own process.
    out = tmp_path / "red-team.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "red_team.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    # Assert: every attack ran and ended in the safe behaviour.
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["number"] for r in result["rows"]] == QUICK_ROWS
    failed = {r["number"]: (r["answer"], r["changed"]) for r in result["rows"] if r["verdict"] != "PASS"}
    assert failed == {}
    assert "| 1 | cohort member mallory" in done.stdout and f"{len(QUICK_ROWS)} attacks: {len(QUICK_ROWS)} PASS" in done.stdout
