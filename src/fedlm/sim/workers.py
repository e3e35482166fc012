"""The `processes` executor: a pool of local worker processes, each holding its own model.

Each worker builds its trainer once (loading the model) and then runs one client at a
time. Vectors do not travel through pipes: the global vector and a ring of output slots
live in shared memory (a file under /dev/shm that every process maps), so a client's
update is written once by its worker and folded straight from there. Only the task, the
client's private parameters and its metrics are pickled. Workers fork from a fork server
that has imported the trainer's modules once, so a worker (or a replacement for one that
died) starts without importing torch again.

A worker that dies mid-client (killed, out of memory, a crash in native code) is reported
as that client's failure and replaced; the round goes on. So is one still training
`client_timeout` seconds after it started a client (a hang, not a death): it is killed, so
a hanging client never holds the round past that deadline. An exception raised by the
trainer is a bug or bad data, not a dropout: it stops the run, as it would in process.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.sim.cohort import ClientJob, CohortSink, TrainerFactory
from fedlm.sim.dispatch import Finished, run_in_order
from fedlm.sim.threads import limit_blas_threads, worker_threads

EMPTY = np.empty(0, np.float32)


class WorkerFailed(RuntimeError):
    """A worker could not start, or a client's training raised inside one."""


class SharedVectors:
    """`rows` float32 vectors of `size` in a file under /dev/shm, mapped by every process that opens it."""

    def __init__(self, rows: int, size: int, path: str | None = None) -> None:
        self.rows, self.size, self.owner = rows, size, path is None
        nbytes = max(rows * size * 4, 1)
        if path is None:
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
            fd, path = tempfile.mkstemp(prefix="fedlm-vectors-", dir=folder)
            os.ftruncate(fd, nbytes)
        else:
            fd = os.open(path, os.O_RDWR)
        self.path = path
        try:
            self.map = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        self.array = np.frombuffer(self.map, np.float32, count=rows * size).reshape(rows, size)

    def close(self) -> None:
        self.array = EMPTY.reshape(0, 0)
        try:
            self.map.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass
        if self.owner:
            Path(self.path).unlink(missing_ok=True)


def worker_main(conn: Connection, factory: TrainerFactory, paths: tuple[str, str], size: int, window: int, threads: int) -> None:
    """A worker's whole life: build the trainer, then train clients until told to stop (None)."""
    limit_blas_threads()
    trainer = factory(threads)
    global_path, slots_path = paths
    global_vector = SharedVectors(1, size, global_path).array[0]
    slots = SharedVectors(window, size, slots_path).array
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the main process is gone
            return
        if message is None:
            return
        position, slot, job = message
        try:
            out = slots[slot]
            update = trainer(job, global_vector, out)
            if update.vector is not out:
                np.copyto(out, update.vector)
            conn.send(("done", position, replace(update, vector=EMPTY), job.private, job.residual))
        except Exception:  # noqa: BLE001 - sent to the main process, which raises it there
            conn.send(("error", position, traceback.format_exc()))


@dataclass
class Worker:
    process: Any
    conn: Connection
    busy: int | None = None  # the cohort position it is training
    ready: bool = False
    started: float = 0.0  # time.monotonic() when it took its client


class ProcessExecutor:
    """A local pool of `workers` processes; `window` output slots (default 2 per worker)."""

    def __init__(self, factory: TrainerFactory, *, workers: int, size: int, window: int = 0,
                 client_timeout: float = 0.0) -> None:
        if workers < 1:
            raise ValueError("the process pool needs at least one worker")
        self.factory, self.size, self.window = factory, size, window or 2 * workers
        self.client_timeout = client_timeout  # seconds; 0 = a client may train for as long as it takes
        self.threads = worker_threads(workers)
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["fedlm.sim.workers", *factory.preload])
        self.global_block = SharedVectors(1, size)
        self.slots = SharedVectors(self.window, size)
        self.pool: list[Worker] = []
        self.jobs: Sequence[ClientJob] = ()
        try:
            self.pool = [self.start_worker() for _ in range(workers)]
            while not all(w.ready for w in self.pool):
                self.wait()
        except BaseException:
            self.close()
            raise

    def start_worker(self) -> Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=worker_main, daemon=True, name="fedlm-client-worker",
            args=(child, self.factory, (self.global_block.path, self.slots.path), self.size, self.window, self.threads),
        )
        process.start()
        child.close()  # only the worker holds its end: its death then reads as end-of-file here
        return Worker(process, parent)

    def run(self, jobs: Sequence[ClientJob], global_vector: np.ndarray, sink: CohortSink) -> None:
        np.copyto(self.global_block.array[0], global_vector)
        self.jobs = jobs
        run_in_order(jobs, self, sink, window=self.window)

    def has_idle(self) -> bool:
        return any(w.ready and w.busy is None for w in self.pool)

    def submit(self, position: int, job: ClientJob, slot: int) -> None:
        worker = next(w for w in self.pool if w.ready and w.busy is None)
        worker.busy, worker.started = position, time.monotonic()
        worker.conn.send((position, slot, job))

    def wait(self) -> list[Finished]:
        """Block until a worker answers or dies; a dead worker's client fails and a new worker starts."""
        waiting = {w.conn: w for w in self.pool if w.busy is not None or not w.ready}
        finished = []
        for conn in wait(list(waiting), timeout=self.time_left()):
            worker = waiting[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                finished += self.replace_dead(worker)
                continue
            finished += self.receive(worker, message)
        return finished + self.stop_overdue()

    def time_left(self) -> float | None:
        """Seconds until the earliest busy worker's client is overdue (None: no deadline)."""
        if not self.client_timeout:
            return None
        started = [w.started for w in self.pool if w.busy is not None]
        return max(0.0, min(started) + self.client_timeout - time.monotonic()) if started else None

    def stop_overdue(self) -> list[Finished]:
        """Kill every worker whose client has trained past client_timeout; each client fails, a new worker starts."""
        if not self.client_timeout:
            return []
        now, finished = time.monotonic(), []
        for worker in [w for w in self.pool if w.busy is not None and now - w.started >= self.client_timeout]:
            worker.process.kill()
            worker.process.join()
            self.pool.remove(worker)
            worker.conn.close()
            self.pool.append(self.start_worker())
            reason = (f"still training after simulation.client_timeout_seconds = {self.client_timeout:g}; "
                      f"worker process {worker.process.pid} was stopped and replaced")
            finished.append(Finished(worker.busy, None, reason))
        return finished

    def receive(self, worker: Worker, message: tuple) -> list[Finished]:
        """A worker's message: ready (its trainer is built), done (an update in its slot), or error."""
        if message[0] == "ready":
            worker.ready = True
            return []
        kind, position, *rest = message
        worker.busy = None
        job = self.jobs[position]
        if kind == "error":
            raise WorkerFailed(f"client {job.task.client_id} raised in worker process {worker.process.pid}:\n{rest[0]}")
        update, private, residual = rest
        np.copyto(job.private, private)
        if job.residual is not None:
            np.copyto(job.residual, residual)
        return [Finished(position, replace(update, vector=self.slots.array[position % self.window]))]

    def replace_dead(self, worker: Worker) -> list[Finished]:
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        self.pool.remove(worker)
        worker.conn.close()
        if not worker.ready:
            raise WorkerFailed(f"a worker process exited with code {code} while building its trainer (loading the model)")
        self.pool.append(self.start_worker())
        reason = f"worker process {worker.process.pid} died (exit code {code})"
        return [Finished(worker.busy, None, reason)] if worker.busy is not None else []

    def worker_pids(self) -> tuple[int, ...]:
        return tuple(w.process.pid for w in self.pool if w.process.pid is not None)

    def worker_count(self) -> int:
        return len(self.pool)

    def close(self) -> None:
        """Stop every worker (politely, then by force) and free the shared memory. Safe to call twice."""
        for worker in self.pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self.pool:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.pool = []
        self.global_block.close()
        self.slots.close()
