"""The service load benchmark's pieces on worked numbers (benchmarks/service_load.py and the modules it imports),
and the script itself on 3 clients."""

from __future__ import annotations

import json
import linecache
import subprocess
import sys
import threading
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from light_clients import Tally, route_of  # noqa: E402
from server_profile import TimedLock, category_of  # noqa: E402
from service_harness import BareProtocol  # noqa: E402
from service_load import figures  # noqa: E402


def frame_in(filename: str, function: str, line: str):
    """A live frame of `function`, compiled as if from `filename`, stopped on `line` (its source put in linecache)."""
    source = f"import sys\ndef {function}():\n    return sys._getframe()  # {line}\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[function]()


def test_route_of_replaces_numbers_only() -> None:
    # Prepare / Execute / Assert
    assert route_of("/v1/rounds/12/updates") == "/v1/rounds/{n}/updates"
    assert route_of("/v1/models/0/global") == "/v1/models/{n}/global"
    assert route_of("/v1/tasks/next") == "/v1/tasks/next"


def test_figures_count_only_complete_rounds_and_time_them_from_the_start() -> None:
    # Prepare: 2 clients, 3 rounds asked; rounds 1 and 2 complete at t = 11 and 13, round 3 has one update at t = 14.
    tally = Tally(accepted={1: 2, 2: 2, 3: 1}, round_end={1: 11.0, 2: 13.0, 3: 14.0}, upload_s=[0.1, 0.2, 0.3, 0.4, 0.5])
    # Execute
    result = figures(tally, 10.0, clients=2, rounds=3, finished=False)
    # Assert: 5 accepted over 4 s; walls 1 s and 2 s; the unfinished round is not counted.
    assert result["rounds_completed"] == 2
    assert result["accepted"] == 5
    assert result["accepted_per_s"] == pytest.approx(5 / 4)
    assert result["round_wall_s"] == pytest.approx([1.0, 2.0])
    assert result["upload_p50_ms"] == pytest.approx(300.0)
    assert result["poll_p50_ms"] is None


def test_stack_categories_come_from_file_function_and_line() -> None:
    # Prepare: frames standing in for the coordinator's code (fake file names, one per source, real frames).
    fsync = frame_in("/x/src/fedlm/service/blobs.py", "commit", "os.fsync(handle.fileno())")
    waiting = frame_in("/x/src/fedlm/service/coordinator.py", "poll", "with self.lock:")
    logic = frame_in("/y/src/fedlm/service/coordinator.py", "poll", "rnd = self.rnd")
    unknown = frame_in("/x/elsewhere.py", "f", "pass")
    # Execute / Assert: the innermost frame decides (the test's own frames further out never do).
    assert category_of(fsync) == "blob fsync + rename"
    assert category_of(waiting) == "coordinator lock wait"
    assert category_of(logic) == "coordinator logic"
    assert category_of(unknown) == "other"


def test_timed_lock_counts_outermost_holds_per_caller() -> None:
    # Prepare
    lock = TimedLock()

    def submit() -> None:
        with lock:
            with lock:  # re-entrant, as the coordinator's RLock is: one hold, not two
                pass

    # Execute
    submit()
    submit()
    worker = threading.Thread(target=submit)
    worker.start()
    worker.join()
    figures_ = lock.figures()
    # Assert
    assert figures_["callers"]["submit"]["count"] == 3
    assert 0.0 <= figures_["held_share"] <= 1.0
    assert lock.acquire(blocking=False) and lock._mine.depth == 1
    lock.release()


def test_bare_protocol_closes_a_round_after_every_client_and_finishes_after_the_last() -> None:
    # Prepare: 2 clients, 2 rounds
    app = BareProtocol(clients=2, rounds=2, global_body=b"\x00" * 10)
    # Execute / Assert
    assert json.loads(app.answer("POST", "/v1/tasks/next")[0])["task"]["round"] == 1
    app.answer("POST", "/v1/rounds/1/updates")
    assert json.loads(app.answer("POST", "/v1/tasks/next")[0])["task"]["round"] == 1  # one of two
    app.answer("POST", "/v1/rounds/1/updates")
    assert json.loads(app.answer("POST", "/v1/tasks/next")[0])["task"] == {"round": 2, "version": 1,
                                                                          "global_sha256": app.global_sha}
    app.answer("POST", "/v1/rounds/2/updates")
    app.answer("POST", "/v1/rounds/2/updates")
    answer = json.loads(app.answer("POST", "/v1/tasks/next")[0])
    assert answer["finished"] is True and answer["task"] is None
    assert app.answer("GET", "/v1/models/1/global") == (b"\x00" * 10, b"application/octet-stream")


def test_script_runs_three_clients_through_two_rounds_on_sqlite() -> None:
    # Prepare / Execute: the real script, its servers in their own processes.
    done = subprocess.run([sys.executable, str(BENCHMARKS / "service_load.py"), "--clients", "3", "--rounds", "2",
                           "--mb", "0.01", "--database", "sqlite", "--json"], capture_output=True, text=True, timeout=120)
    # Assert: both configurations completed both rounds; the coordinator's lock saw every accept.
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    for key in ("baseline", "sqlite"):
        assert results[key]["rounds_completed"] == 2 and results[key]["accepted"] == 6, results[key]
        assert results[key]["peak_rss_mb"] > 0
    assert results["sqlite"]["server_rounds_done"] == 2
    assert results["sqlite"]["profile"]["lock"]["callers"]["submit"]["count"] == 6
    assert results["sqlite"]["server_errors"] == []
