"""Peak resident memory of a run: this process plus its local workers, sampled from /proc.

`resource.getrusage` gives only a process's lifetime peak (imports included, workers
not); sampling the resident set of every process involved while the run goes gives the
peak of the run itself. Linux only: elsewhere the sampler reports the lifetime peak.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Callable

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident set in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def lifetime_peak_bytes() -> int:
    """This process's peak resident set since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class RssSampler:
    """In a `with` block, samples the summed resident set of this process and `workers()` every `interval` s."""

    def __init__(self, workers: Callable[[], tuple[int, ...]] = tuple, interval: float = 0.002) -> None:
        self.workers, self.interval = workers, interval
        self.baseline = self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample_until_stopped, name="rss-sampler", daemon=True)

    def total(self) -> int:
        return resident_bytes() + sum(resident_bytes(pid) for pid in self.workers())

    def sample_until_stopped(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.total())

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = self.total()
        if os.path.exists("/proc/self/statm"):
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        self.peak = max(self.peak, self.total())
        if not os.path.exists("/proc/self/statm"):
            self.peak = lifetime_peak_bytes()
