"""A cohort's client work as the round engine sees it: jobs go out, updates come back in cohort order.

An executor runs a trainer ((job, global vector, out) -> update) for every job of a
cohort and hands the updates to a sink strictly in cohort order (client-id order, as
`open_round` keeps the cohort sorted by the sampler), whatever order they finish in. So
every executor folds the same updates in the same order, and a seed fixes the global
bit for bit. The serial executor runs in this process and copies nothing per client:
one output buffer, folded by the sink before the next client starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedlm.core.types import Task, Update


@dataclass(frozen=True)
class ClientJob:
    """One client's turn in a round. Its client-side state travels with it and is updated in place."""

    index: int  # position in the cohort
    task: Task
    private: np.ndarray = field(repr=False)  # the client's private parameters (size 0 when there are none)
    residual: np.ndarray | None = field(default=None, repr=False)  # top-k error feedback


NO_PRIVATE = np.empty(0, np.float32)

# Trains one client: (job, global vector, out) -> its update, whose vector is `out`; the
# job's private parameters and residual are updated in place.
Trainer = Callable[[ClientJob, np.ndarray, np.ndarray], Update]


class TrainerFactory(Protocol):
    """Builds a trainer once inside a worker (loading its model there). Must pickle.

    `threads` is the torch thread count the executor gives each worker (a trainer may
    keep a configured one instead). `preload` names modules a process pool may import
    once in its fork server, so that each worker starts with them already imported.
    """

    preload: tuple[str, ...]

    def __call__(self, threads: int) -> Trainer: ...


class CohortSink(Protocol):
    """Where an executor reports: `delivered` and `failed` come in cohort order, once per job."""

    def started(self, job: ClientJob) -> None: ...
    def delivered(self, job: ClientJob, update: Update) -> None: ...
    def failed(self, job: ClientJob, reason: str) -> None: ...


class Executor(Protocol):
    def run(self, jobs: Sequence[ClientJob], global_vector: np.ndarray, sink: CohortSink) -> None:
        """Run every job; an update's vector is valid only until `sink.delivered` returns."""

    def worker_pids(self) -> tuple[int, ...]:
        """Processes on this machine that run clients besides this one (for memory accounting)."""

    def worker_count(self) -> int:
        """How many clients it runs at once."""

    def close(self) -> None: ...


class SerialExecutor:
    """Every client in this process, in turn, into one reused buffer: no copy, no pickling."""

    def __init__(self, trainer: Trainer, size: int) -> None:
        self.trainer = trainer
        self.buffer = np.empty(size, np.float32)

    def run(self, jobs: Sequence[ClientJob], global_vector: np.ndarray, sink: CohortSink) -> None:
        for job in jobs:
            sink.started(job)
            sink.delivered(job, self.trainer(job, global_vector, self.buffer))

    def worker_pids(self) -> tuple[int, ...]:
        return ()

    def worker_count(self) -> int:
        return 1

    def close(self) -> None:
        pass


def make_jobs(
    tasks: Sequence[Task], private: dict[str, np.ndarray], initial_private: np.ndarray,
    residuals: dict[str, np.ndarray] | None = None, size: int = 0,
) -> list[ClientJob]:
    """A job per task, with the client's private parameters (and top-k residual when `residuals` is given).

    A client seen for the first time starts from `initial_private` and a zero residual of `size`.
    """
    jobs = []
    for index, task in enumerate(tasks):
        own = private.get(task.client_id)
        if own is None:
            own = private[task.client_id] = initial_private.copy() if initial_private.size else NO_PRIVATE
        residual = None
        if residuals is not None:
            residual = residuals.setdefault(task.client_id, np.zeros(size, np.float32))
        jobs.append(ClientJob(index, task, own, residual))
    return jobs
