"""Where a server process spends its time, without py-spy: a stack sampler and a timed coordinator lock.

Every `interval` seconds the sampler reads `sys._current_frames()` and files each thread's
stack under the first category (innermost frame first) whose rule matches; a C call that
holds or releases the GIL (an fsync, a SQLite commit, an SSL read, a SHA-256 update) shows as
the Python line that made it, so the rules look at the file, the function and the line's
text. The event loop's thread (the main thread under uvicorn) and the worker threads
(anyio's thread pool: the sync routes, `precheck`, `submit`) are counted apart. A thread
parked in `select` or on its work queue is idle; one on `with self.lock` in the coordinator
is waiting for the coordinator's lock.

A sample filed under the database is also filed under the fedlm functions that asked for it
(the outermost and the innermost frame of fedlm.service, "poll > _round_row"), so the
database's share splits by route and query.

Sampling takes the GIL, so it slows the server a little (a few per cent at 20 ms); the
figures are shares of samples, comparable between configurations of the same run.

`TimedLock` stands in for the coordinator's lock (`Coordinator.lock`, an RLock that every
poll, upload check and accept, registration and round change holds): it adds up how long
each caller held it (outermost holds only), so the share of the run during which the lock
was held says whether that one serialized section is what limits the server.
"""

from __future__ import annotations

import json
import linecache
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

LOCK_WAIT = "coordinator lock wait"
DATABASE = "database (SQLAlchemy + driver)"
POOL_WAIT = "database connection wait"
POOL_QUEUE = "sqlalchemy/util/queue.py"
# (category, file path contains, function name or "" for any, line text contains or "" for any); first match wins
RULES: tuple[tuple[str, str, str, str], ...] = (
    ("idle", "selectors.py", "select", ""),
    ("idle", "threading.py", "wait", ""),
    ("idle", "queue.py", "get", ""),
    (LOCK_WAIT, "server_profile.py", "acquire", ""),
    (LOCK_WAIT, "fedlm/service/coordinator.py", "", "self.lock"),
    ("blob fsync + rename", "fedlm/service/blobs.py", "commit", ""),
    ("body -> staging file (hash, write)", "fedlm/service/blobs.py", "receive", ""),
    ("global download: hash check", "fedlm/service/blobs.py", "verified_path", ""),
    (DATABASE, "sqlalchemy/", "", ""),
    (DATABASE, "/sqlite3/", "", ""),
    (DATABASE, "psycopg", "", ""),
    ("TLS (ssl, sslproto)", "asyncio/sslproto.py", "", ""),
    ("TLS (ssl, sslproto)", "/ssl.py", "", ""),
    ("certificate check (x509)", "fedlm/service/certs.py", "", ""),
    ("certificate check (x509)", "fedlm/service/app.py", "identity", ""),
    ("certificate check (x509)", "fedlm/service/tls.py", "tls_info", ""),
    ("update read, validate, fold", "fedlm/service/payloads.py", "", ""),
    ("update read, validate, fold", "fedlm/server/", "", ""),
    ("update read, validate, fold", "fedlm/updates/", "", ""),
    ("monitoring sketch", "fedlm/monitoring/", "", ""),
    ("logging", "/logging/", "", ""),
    ("file I/O in threads (anyio)", "anyio/_core/_fileio.py", "", ""),
    ("HTTP (h11, uvicorn)", "/h11/", "", ""),
    ("HTTP (h11, uvicorn)", "/uvicorn/", "", ""),
    ("FastAPI, Starlette, pydantic", "/fastapi/", "", ""),
    ("FastAPI, Starlette, pydantic", "/starlette/", "", ""),
    ("FastAPI, Starlette, pydantic", "/pydantic", "", ""),
    # a worker thread whose innermost Python frame is anyio's runner is running a C callable handed to the pool:
    # here the 64 KiB reads (and the stat) of Starlette's FileResponse serving the global
    ("file reads of downloads in the thread pool", "anyio/_backends/_asyncio.py", "run", "context.run(func"),
    ("thread hand-off (anyio)", "/anyio/", "", ""),
    ("thread hand-off (anyio)", "asyncio/selector_events.py", "_write_to_self", ""),
    ("socket I/O (asyncio)", "asyncio/selector_events.py", "", ""),
    ("asyncio scheduling (callbacks, task steps)", "/asyncio/", "", ""),
    ("coordinator logic", "fedlm/service/", "", ""),
    ("numpy", "/numpy/", "", ""),
)


# work done anywhere below these functions is theirs, whatever the innermost frame (a thread waiting is still waiting)
WHOLE_STACK: tuple[tuple[str, str, str], ...] = (
    ("round close: re-fold from blobs", "fedlm/service/coordinator.py", "_refold"),
    ("round close: new version, rows", "fedlm/service/coordinator.py", "_close"),
)
WAITING = ("idle", LOCK_WAIT, POOL_WAIT)


def category_of(frame: FrameType | None) -> str:
    """What a stack is doing: a WHOLE_STACK function on it, unless the thread waits; otherwise the first rule matching
    a frame, innermost first ('other' if none does). A thread waiting on SQLAlchemy's pool queue (every connection
    checked out) is waiting for a database connection, not idle."""
    innermost = rule_of(frame)
    if innermost not in WAITING:
        outer = frame
        while outer is not None:
            for name, path, function in WHOLE_STACK:
                if path in outer.f_code.co_filename and outer.f_code.co_name == function:
                    return name
            outer = outer.f_back
    return innermost


def rule_of(frame: FrameType | None) -> str:
    """The first RULES entry matching a frame of the stack, innermost first; 'other' if none does."""
    while frame is not None:
        code = frame.f_code
        for name, path, function, text in RULES:
            if path in code.co_filename and (not function or function == code.co_name) and (
                    not text or text in linecache.getline(code.co_filename, frame.f_lineno or 0)):  # None at times
                if name == "idle" and frame.f_back is not None and POOL_QUEUE in frame.f_back.f_code.co_filename:
                    return POOL_WAIT
                return name
        frame = frame.f_back
    return "other"


def fedlm_callers(frame: FrameType | None) -> str:
    """The outermost and the innermost fedlm.service function on a stack ("poll > _round_row"); "?" if none."""
    names = []
    while frame is not None:
        if "fedlm/service/" in frame.f_code.co_filename:
            names.append(frame.f_code.co_name)
        frame = frame.f_back
    if not names:
        return "?"
    return names[0] if len(names) == 1 else f"{names[-1]} > {names[0]}"


class StackSampler:
    """Counts (thread role, category) over the samples taken while `start`ed; `shares` gives them per role, and every
    `save_every` seconds they are written to `save_to` (uvicorn ends its process by re-raising SIGTERM, so nothing
    after `Server.run` would run)."""

    def __init__(self, save_to: Path, interval: float = 0.02, save_every: float = 1.0) -> None:
        self.interval, self.counts, self.samples, self.database = interval, Counter(), Counter(), Counter()
        self.save_to, self.save_every = save_to, save_every
        self.lock: TimedLock | None = None  # its figures are saved with the samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        main, me = threading.main_thread().ident, threading.get_ident()
        saved = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - saved > self.save_every:
                self.save()
                saved = time.monotonic()
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                role, category = "event loop" if ident == main else "worker threads", category_of(frame)
                self.counts[role, category] += 1
                self.samples[role] += 1
                if category == DATABASE:
                    self.database[fedlm_callers(frame)] += 1

    def save(self) -> None:
        staged = self.save_to.with_suffix(".new")
        total = max(sum(self.database.values()), 1)
        figures = {**self.shares(), **({"lock": self.lock.figures()} if self.lock is not None else {}),
                   "database_by_caller": {c: n / total for c, n in self.database.most_common(8)}}
        staged.write_text(json.dumps(figures))
        staged.replace(self.save_to)

    def shares(self) -> dict[str, dict[str, float]]:
        """Per role: each category's share of the role's working samples (neither idle nor waiting for the
        coordinator's lock or a database connection), `busy` (working threads per tick: for the event loop, the share
        of time it worked), `lock_wait` and `pool_wait` (threads waiting for the coordinator's lock, for a database
        connection from the engine's pool, per tick)."""
        ticks = max(self.samples["event loop"], 1)
        out: dict[str, dict[str, float]] = {}
        for role in ("event loop", "worker threads"):
            working = {c: n for (r, c), n in self.counts.items() if r == role and c not in ("idle", LOCK_WAIT, POOL_WAIT)}
            total = sum(working.values())
            out[role] = {c: n / total for c, n in sorted(working.items(), key=lambda kv: -kv[1])} if total else {}
            out[role]["busy"] = total / ticks
            out[role]["lock_wait"] = self.counts[role, LOCK_WAIT] / ticks
            out[role]["pool_wait"] = self.counts[role, POOL_WAIT] / ticks
        return out


class TimedLock:
    """A re-entrant lock that adds up, per calling function, the outermost holds' count and seconds."""

    def __init__(self) -> None:
        self._lock, self._mine = threading.RLock(), threading.local()
        self.count, self.seconds = Counter(), Counter()
        self.first: float | None = None
        self.last = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        depth = getattr(self._mine, "depth", 0)
        if depth == 0:
            self._mine.started, self._mine.caller = time.perf_counter(), caller_name()
            self.first = self._mine.started if self.first is None else self.first
        self._mine.depth = depth + 1
        return True

    def release(self) -> None:
        self._mine.depth -= 1
        if self._mine.depth == 0:  # still held: the counters need no lock of their own
            self.last = time.perf_counter()
            self.count[self._mine.caller] += 1
            self.seconds[self._mine.caller] += self.last - self._mine.started
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()

    def figures(self) -> dict[str, object]:
        """`held_share`: the share of the time from the first hold to the last release during which it was held."""
        span = self.last - self.first if self.first is not None else 0.0
        callers = {c: {"count": self.count[c], "seconds": self.seconds[c]} for c in sorted(self.seconds, key=lambda c: -self.seconds[c])}
        return {"held_share": sum(self.seconds.values()) / span if span > 0 else 0.0, "span_seconds": span, "callers": callers}


def caller_name() -> str:
    """The function that took the lock: the first frame outside this file."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame.f_code.co_name if frame is not None else "?"
