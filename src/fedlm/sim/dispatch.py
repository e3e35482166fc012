"""Hand a cohort's jobs to a pool of workers and deliver their results in cohort order.

Workers finish in any order; the sink sees results strictly by cohort position, so the
sum is folded in the same order as the serial executor folds it. At most `window` jobs
are out ahead of the next one to deliver: that bounds the results held at once (and lets
a pool give job `i` the output slot `i % window`, free by then).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fedlm.core.types import Update
from fedlm.sim.cohort import ClientJob, CohortSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """A job's end: its update, or None and why it failed (its worker died)."""

    position: int
    update: Update | None
    reason: str = ""


class WorkerPool(Protocol):
    def has_idle(self) -> bool:
        """Whether a worker can take a job now."""

    def submit(self, position: int, job: ClientJob, slot: int) -> None:
        """Start `job` on an idle worker; its update goes to output slot `slot`."""

    def wait(self) -> list[Finished]:
        """Block until something changes (a job ended, a worker became idle); may return no job."""


def run_in_order(jobs: Sequence[ClientJob], pool: WorkerPool, sink: CohortSink, *, window: int) -> None:
    """Run every job on `pool`, reporting to `sink` in cohort order; failed jobs become failures."""
    if window < 1:
        raise ValueError("the dispatch window must be >= 1")
    finished: dict[int, Finished] = {}
    submitted = delivered = 0
    while delivered < len(jobs):
        while submitted < len(jobs) and submitted < delivered + window and pool.has_idle():
            sink.started(jobs[submitted])
            pool.submit(submitted, jobs[submitted], submitted % window)
            submitted += 1
        if delivered in finished:
            deliver(jobs[delivered], finished.pop(delivered), sink)
            delivered += 1
            continue
        for result in pool.wait():
            finished[result.position] = result


def deliver(job: ClientJob, result: Finished, sink: CohortSink) -> None:
    if result.update is None:
        log.warning("client %s failed in round %d: %s", job.task.client_id, job.task.round, result.reason)
        sink.failed(job, result.reason)
    else:
        sink.delivered(job, result.update)
