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
from server_profile import TimedLock, category_of, fedlm_callers  # noqa: E402
from service_harness import BareProtocol, error_lines  # noqa: E402
from service_load import figures  # noqa: E402
from service_meters import round_timeline  # noqa: E402


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


def test_round_timeline_takes_the_last_upload_at_any_replica_and_the_leader_s_open_and_close(tmp_path) -> None:
    # Prepare: round 1 opens at 10.000 s, its last upload is at the follower (12.500 s), the leader closes it at
    # 14.250 s and opens round 2 at 14.500 s; round 2 takes one upload at 15.000 s and is still open.
    day = "2026-12-01 17:00:"
    leader, follower = tmp_path / "leader.log", tmp_path / "follower.log"
    leader.write_text(f"{day}10,000 INFO fedlm.service round 1 opened: 2 invited, 2 needed\n"
                      f"{day}11,000 INFO fedlm.service accepted update round=1 client=a size=9 sha256=x\n"
                      f"{day}14,250 INFO fedlm.service round 1 closed (target reached): version 1\n"
                      f"{day}14,300 WARNING fedlm.service round 1 opened: not an INFO line\n"
                      f"{day}14,500 INFO fedlm.service round 2 opened: 2 invited, 2 needed\n")
    follower.write_text(f"{day}12,500 INFO fedlm.service accepted update round=1 client=b size=9 sha256=y\n"
                        f"{day}15,000 INFO fedlm.service accepted update round=2 client=b size=9 sha256=z\n")
    # Execute
    timeline = round_timeline([leader, follower])
    # Assert
    assert [t["round"] for t in timeline] == [1, 2]
    assert timeline[0]["collect_s"] == pytest.approx(2.5)
    assert timeline[0]["close_s"] == pytest.approx(1.75)
    assert timeline[0]["open_s"] == pytest.approx(0.25)
    assert timeline[1]["collect_s"] == pytest.approx(0.5)
    assert timeline[1]["close_s"] is None and timeline[1]["open_s"] is None


def test_error_lines_keep_whole_tracebacks_with_what_printed_them() -> None:
    # Prepare: an unraisable exception's traceback, an INFO line, a logged error with its traceback, an INFO line
    log = ("t INFO fedlm.service accepted update round=1\n"
           "Exception ignored in: <function Pool.__del__>\nTraceback (most recent call last):\n"
           '  File "/a.py", line 3, in __del__\n    if a <= b:\nTypeError: no\n'
           "t INFO fedlm.service round 1 closed\n"
           "t ERROR fedlm.service coordinator tick failed\nTraceback (most recent call last):\n"
           '  File "/b.py", line 1, in tick\nValueError: x\nt INFO fedlm.service round 2 opened\n')
    # Execute
    kept = error_lines(log)
    # Assert: both tracebacks whole, each once, with the line before; no INFO line
    assert kept == log.splitlines()[1:6] + log.splitlines()[7:11]


def test_stack_categories_come_from_file_function_and_line() -> None:
    # Prepare: frames standing in for the coordinator's code (fake file names, one per source, real frames).
    fsync = frame_in("/x/src/fedlm/service/blobs.py", "commit", "os.fsync(handle.fileno())")
    waiting = frame_in("/x/src/fedlm/service/coordinator.py", "poll", "with self.lock:")
    logic = frame_in("/y/src/fedlm/service/coordinator.py", "poll", "rnd = self.rnd")
    unknown = frame_in("/x/elsewhere.py", "f", "pass")
    namespace: dict = {}  # a pool checkout waiting in threading's Condition.wait, and a wait elsewhere
    exec(compile("import sys\ndef wait():\n    return sys._getframe()\n", "/usr/lib/python3/threading.py", "exec"), namespace)
    exec(compile("def get():\n    return wait()\n", "/x/sqlalchemy/util/queue.py", "exec"), namespace)
    # Execute / Assert: the innermost frame decides (the test's own frames further out never do).
    # the close's re-fold hashing a blob, and the close waiting for a connection
    exec(compile("import sys\ndef verified_path():\n    return sys._getframe()\n", "/x/src/fedlm/service/blobs.py",
                 "exec"), namespace)
    exec(compile("def _refold():\n    return verified_path()\ndef _close():\n    return get()\n",
                 "/x/src/fedlm/service/coordinator.py", "exec"), namespace)
    assert category_of(namespace["verified_path"]()) == "global download: hash check"
    assert category_of(namespace["_refold"]()) == "round close: re-fold from blobs"
    assert category_of(namespace["_close"]()) == "database connection wait"  # waiting, wherever it waits
    assert category_of(namespace["get"]()) == "database connection wait"
    assert category_of(namespace["wait"]()) == "idle"
    assert category_of(fsync) == "blob fsync + rename"
    assert category_of(waiting) == "coordinator lock wait"
    assert category_of(logic) == "coordinator logic"
    assert category_of(unknown) == "other"


def test_database_samples_are_named_by_the_outermost_and_innermost_fedlm_function() -> None:
    # Prepare: poll -> _round_row -> a driver call, the first two in a file of fedlm.service, the last one elsewhere
    namespace: dict = {}
    exec(compile("import sys\ndef poll():\n    return _round_row()\ndef _round_row():\n    return driver()\n",
                 "/x/src/fedlm/service/replica.py", "exec"), namespace)
    exec(compile("import sys\ndef driver():\n    return sys._getframe()\n", "/x/psycopg/cursor.py", "exec"), namespace)
    lone = frame_in("/x/src/fedlm/service/coordinator.py", "tick", "pass")
    # Execute / Assert: the driver's frame and the test's own frames are not named
    assert fedlm_callers(namespace["poll"]()) == "poll > _round_row"
    assert fedlm_callers(namespace["driver"]()) == "?"
    assert fedlm_callers(lone) == "tick"


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


def test_script_runs_four_clients_through_two_rounds_on_two_replicas() -> None:
    """Skipped, saying why, where no PostgreSQL answers (tests/postgres_db.py); the script makes its own database on
    that server and drops it."""
    from postgres_db import scratch_database

    with scratch_database() as url:
        # Prepare / Execute: baseline, then two replicas on one database; clients 0 and 2 at the first, 1 and 3 at the other.
        done = subprocess.run([sys.executable, str(BENCHMARKS / "service_load.py"), "--clients", "4", "--rounds", "2",
                               "--mb", "0.01", "--database", "replicas", "--postgres-url", url, "--json"],
                              capture_output=True, text=True, timeout=120)
    # Assert: 4 clients x 2 rounds accepted, 2 x 2 at each replica (client and server side); the first one led and closed
    # both rounds, the other closed none; no server logged an error.
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert set(results) == {"baseline", "replicas", "setup"}
    replicas = results["replicas"]
    assert replicas["label"] == "fedlm coordinators, 2 replicas, PostgreSQL"
    assert replicas["rounds_completed"] == 2 and replicas["accepted"] == 8 and replicas["finished"], replicas
    assert replicas["server_rounds_done"] == 2
    servers = replicas["servers"]
    assert [(s["role"], s["accepted"], s["accepted_logged"], s["rounds_closed"]) for s in servers] == [
        ("leader", 4, 4, 2), ("follower", 4, 4, 0)]
    assert servers[0]["port"] != servers[1]["port"]
    assert replicas["peak_rss_mb"] == pytest.approx(servers[0]["peak_rss_mb"] + servers[1]["peak_rss_mb"])
    assert replicas["server_errors"] == [] and replicas["clients_failed"] == 0
    assert [t["round"] for t in replicas["round_timeline"]] == [1, 2]
    assert all(t["close_s"] is not None and t["close_s"] >= 0 for t in replicas["round_timeline"])
