"""The `ray` executor: Ray actors, each holding its own model, on one machine or a cluster.

We use Ray (an existing distributed engine) rather than a home-made one for populations
past one machine: it places the actors, moves the vectors through its object store and
tells us when an actor's process dies. `address = ""` starts a local Ray (`ray.init()`);
"auto" or a "ray://host:port" URL joins a cluster started with `ray start`. Ray is an
optional extra: `pip install 'fedlm[ray]'`.

The global vector is put in the object store once a round; each actor copies it once.
Results are folded in cohort order (see sim.dispatch). An actor that dies is reported as
its client's failure and replaced, and so is one still training `client_timeout` seconds
after it started a client (a hang): it is killed, so it never holds the round past that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fedlm.sim.cohort import ClientJob, CohortSink, Trainer, TrainerFactory
from fedlm.sim.dispatch import Finished, run_in_order
from fedlm.sim.threads import limit_blas_threads
from fedlm.sim.workers import WorkerFailed


class RayUnavailable(ValueError):
    """simulation.executor = 'ray' without the ray package installed."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("simulation.executor = 'ray' needs Ray: pip install 'fedlm[ray]'") from None
    return ray


class ClientActor:
    """One Ray actor: a trainer built once, the round's global vector cached, one output buffer."""

    def __init__(self, factory: TrainerFactory, threads: int) -> None:
        limit_blas_threads()
        self.trainer: Trainer = factory(threads)
        self.global_key: Any = None
        self.global_vector = np.empty(0, np.float32)
        self.out = np.empty(0, np.float32)

    def pid(self) -> int:
        return os.getpid()

    def train(self, job: ClientJob, global_ref: list) -> tuple:
        """`global_ref` is [ObjectRef], wrapped so Ray hands over the reference, not a read-only array."""
        import ray

        if global_ref[0].hex() != self.global_key:
            self.global_vector = np.array(ray.get(global_ref[0]))  # writable: torch takes views of it
            self.global_key = global_ref[0].hex()
            self.out = np.empty_like(self.global_vector)
        # Ray hands arrays over read-only; the trainer updates the client's state in place
        job = replace(job, private=np.array(job.private), residual=None if job.residual is None else np.array(job.residual))
        update = self.trainer(job, self.global_vector, self.out)
        return update, job.private, job.residual


class RayExecutor:
    """`workers` actors (0: one per CPU of the cluster), each reserving one CPU."""

    def __init__(self, factory: TrainerFactory, *, workers: int, address: str = "", client_timeout: float = 0.0) -> None:
        self.ray = import_ray()
        self.client_timeout = client_timeout  # seconds; 0 = a client may train for as long as it takes
        self.started_at: dict[Any, float] = {}  # result ref -> time.monotonic() when its client started
        self.factory, self.actor_class = factory, self.ray.remote(num_cpus=1)(ClientActor)
        self.actors: dict[Any, Any] = {}  # actor -> readiness ref while it starts, else None
        self.inflight: dict[Any, tuple[Any, int]] = {}  # result ref -> (actor, position)
        self.owns_ray = not self.ray.is_initialized()
        if self.owns_ray:
            self.connect(address, workers)
        self.local = len(self.ray.nodes()) == 1 and not address
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        self.count = workers or max(1, cpus)
        if self.count > cpus:
            self.close()
            raise ValueError(f"simulation.workers = {self.count} exceeds the Ray cluster's {cpus} CPUs "
                             "(each actor reserves one): the extra actors would never start")
        self.pids: dict[Any, int] = {}
        self.jobs: Sequence[ClientJob] = ()
        self.global_ref: Any = None
        try:
            for _ in range(self.count):
                self.start_actor()
            while any(ready is not None for ready in self.actors.values()):
                self.wait()
        except BaseException:
            self.close()
            raise

    def connect(self, address: str, workers: int) -> None:
        if address:
            self.ray.init(address=address)  # the cluster's own settings (CPUs, dashboard) apply
        else:
            from fedlm.sim.threads import cpu_count

            # "local": a new Ray of our own, even where `ray start` left a cluster running on this machine
            self.ray.init(address="local", num_cpus=max(workers, cpu_count()), include_dashboard=False)

    def start_actor(self) -> None:
        actor = self.actor_class.remote(self.factory, 1)
        self.actors[actor] = actor.pid.remote()

    def run(self, jobs: Sequence[ClientJob], global_vector: np.ndarray, sink: CohortSink) -> None:
        self.jobs, self.global_ref = jobs, self.ray.put(global_vector)
        try:
            run_in_order(jobs, self, sink, window=2 * self.count)
        finally:
            self.global_ref = None  # frees the round's global in the object store

    def has_idle(self) -> bool:
        return any(ready is None and actor not in self.busy() for actor, ready in self.actors.items())

    def busy(self) -> set:
        return {actor for actor, _ in self.inflight.values()}

    def submit(self, position: int, job: ClientJob, slot: int) -> None:
        busy = self.busy()
        actor = next(a for a, ready in self.actors.items() if ready is None and a not in busy)
        ref = actor.train.remote(job, [self.global_ref])
        self.inflight[ref], self.started_at[ref] = (actor, position), time.monotonic()

    def wait(self) -> list[Finished]:
        starting = {ready: actor for actor, ready in self.actors.items() if ready is not None}
        done, _ = self.ray.wait([*self.inflight, *starting], num_returns=1, timeout=self.time_left())
        finished = self.stop_overdue(set(done))
        for ref in done:
            if ref in starting:
                self.started(starting[ref], ref)
            else:
                finished.append(self.collect(ref))
        return finished

    def time_left(self) -> float | None:
        """Seconds until the earliest in-flight client is overdue (None: no deadline)."""
        if not self.client_timeout or not self.started_at:
            return None
        return max(0.0, min(self.started_at.values()) + self.client_timeout - time.monotonic())

    def stop_overdue(self, done: set) -> list[Finished]:
        """Kill every actor whose client has trained past client_timeout (and has not just finished)."""
        if not self.client_timeout:
            return []
        now, finished = time.monotonic(), []
        for ref in [r for r, t in self.started_at.items() if now - t >= self.client_timeout and r not in done]:
            actor, position = self.inflight.pop(ref)
            del self.started_at[ref]
            self.ray.kill(actor)
            del self.actors[actor]
            self.pids.pop(actor, None)
            self.start_actor()
            finished.append(Finished(position, None, f"still training after simulation.client_timeout_seconds = "
                                                     f"{self.client_timeout:g}; its Ray actor was stopped and replaced"))
        return finished

    def started(self, actor: Any, ready: Any) -> None:
        try:
            self.pids[actor] = self.ray.get(ready)
        except self.ray.exceptions.RayError as err:
            raise WorkerFailed(f"a Ray actor failed while building its trainer (loading the model): {err}") from None
        self.actors[actor] = None

    def collect(self, ref: Any) -> Finished:
        actor, position = self.inflight.pop(ref)
        self.started_at.pop(ref, None)
        job = self.jobs[position]
        try:
            update, private, residual = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as err:
            del self.actors[actor]
            self.pids.pop(actor, None)
            self.start_actor()
            return Finished(position, None, f"Ray actor died ({type(err).__name__})")
        except self.ray.exceptions.RayTaskError as err:
            raise WorkerFailed(f"client {job.task.client_id} raised in a Ray actor:\n{err}") from None
        np.copyto(job.private, private)
        if job.residual is not None:
            np.copyto(job.residual, residual)
        return Finished(position, update)

    def worker_pids(self) -> tuple[int, ...]:
        """The actors' processes, when Ray runs on this machine only (a cluster's pids are elsewhere)."""
        return tuple(self.pids.values()) if self.local else ()

    def worker_count(self) -> int:
        return len(self.actors)

    def close(self) -> None:
        for actor in list(self.actors):
            self.ray.kill(actor)
        self.actors, self.inflight, self.started_at = {}, {}, {}
        if self.owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
