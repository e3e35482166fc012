"""What the service load benchmark measures beside the clients: memory, CPU time and the rounds' timeline.

`Watcher` samples a server process from outside every 50 ms (its RSS, the uploads in its
staging folder). `Usage` reads CPU clocks before and after a configuration's run: each server
process's (and its main thread's: under uvicorn, the event loop's), every PostgreSQL
process's on the machine (the backends that exited included), the load generator's own, and
the machine's busy time, so the work of anything else running on the machine shows.
`round_timeline` reads the servers' logs (fedlm's text format, times to the millisecond) for
when each round opened, took its last upload (at any replica) and closed, so the time a close
takes (a replica leader: noticing it on its tick, re-folding every accepted update from its
blob, the new version) shows apart from the clients' time.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from service_harness import ServerProcess, database_cpu_seconds, machine_busy_seconds, status_kib


class Watcher(threading.Thread):
    """From the generator's side, every 50 ms: the server's RSS and the uploads in its staging folder."""

    def __init__(self, pid: int, staging: Path | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.staging, self.stopped = pid, staging, threading.Event()
        self.max_rss_kib, self.max_staging = 0, 0
        self.ended_by: str | None = None  # why it stopped watching before it was stopped (the process ended, ...)

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            try:
                self.max_rss_kib = max(self.max_rss_kib, status_kib(self.pid, "VmRSS"))
                if self.staging is not None and self.staging.is_dir():
                    self.max_staging = max(self.max_staging, len(os.listdir(self.staging)))
            except (OSError, KeyError) as err:
                self.ended_by = f"{type(err).__name__}: {err}"
                return


class Usage:
    """CPU seconds from construction to `stop`: each server's (whole process, event loop thread), PostgreSQL's (every
    postgres process), the load generator's (this process) and the whole machine's, over the wall time between."""

    def __init__(self, servers: list[ServerProcess], *, database: bool) -> None:
        self.servers, self.load_average = servers, [os.getloadavg()[0]]
        self.before = ([s.cpu() for s in servers], database_cpu_seconds() if database else None, time.process_time(),
                       machine_busy_seconds(), time.perf_counter())

    def stop(self) -> None:
        servers, database, own, busy, wall = self.before
        self.wall = time.perf_counter() - wall
        self.each = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(servers, [s.cpu() for s in self.servers], strict=True)]
        after = database_cpu_seconds() if database is not None else None
        self.database = after - database if database is not None and after is not None else None
        self.own, self.busy = time.process_time() - own, machine_busy_seconds() - busy
        self.server, self.loop = sum(c[0] for c in self.each), sum(c[1] for c in self.each)
        self.load_average.append(os.getloadavg()[0])

    def cores(self) -> dict[str, Any]:
        """Cores used on average; `other_work`: the machine's busy time that was none of the above."""
        other = max(self.busy - self.server - self.own - (self.database or 0.0), 0.0)
        return {"server": self.server / self.wall, "server_event_loop": self.loop / self.wall,
                "load_generator": self.own / self.wall,
                "database": None if self.database is None else self.database / self.wall,
                "machine": self.busy / self.wall, "other_work": other / self.wall, "wall_seconds": self.wall,
                "load_average_1min": self.load_average}

    def ms_per(self, accepted: int) -> dict[str, float | None]:
        """Server CPU per client-round (its poll(s), download and upload), and PostgreSQL's beside it."""
        per = max(accepted, 1)
        return {"all": 1000 * self.server / per, "event_loop": 1000 * self.loop / per,
                "other_threads": 1000 * (self.server - self.loop) / per,
                "database": None if self.database is None else 1000 * self.database / per}


EVENT = re.compile(r"^(\S+ \S+) INFO fedlm\.service (?:round (\d+) (opened|closed)|(accepted) update round=(\d+) )")


def round_timeline(logs: list[Path]) -> list[dict[str, float | int | None]]:
    """Per round, from the servers' logs: seconds from its opening to its last accepted upload (`collect_s`), from
    that upload to the round's close (`close_s`), and from the close to the next round's opening (`open_s`)."""
    times: dict[tuple[str, int], float] = {}
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if (found := EVENT.match(line)) is None:
                continue
            at = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            key = (found[3], int(found[2])) if found[2] else ("accepted", int(found[5]))
            times[key] = max(times.get(key, at), at)  # the last accepted upload; a round opens and closes once

    def between(first: tuple[str, int], then: tuple[str, int]) -> float | None:
        return times[then] - times[first] if first in times and then in times else None

    rounds = sorted({r for kind, r in times if kind == "opened"})
    return [{"round": r, "collect_s": between(("opened", r), ("accepted", r)),
             "close_s": between(("accepted", r), ("closed", r)), "open_s": between(("closed", r), ("opened", r + 1))}
            for r in rounds]
