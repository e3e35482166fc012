"""Pick the client executor that [simulation] names: serial, a process pool, or Ray actors."""

from __future__ import annotations

from collections.abc import Callable

from fedlm.config import SimulationSettings
from fedlm.sim.cohort import Executor, SerialExecutor, Trainer, TrainerFactory
from fedlm.sim.threads import cpu_count


def make_executor(
    settings: SimulationSettings, factory: TrainerFactory, *, size: int, serial: Callable[[], Trainer] | None = None
) -> Executor:
    """An executor for update vectors of `size`; the caller closes it.

    The pool executors build a trainer with `factory` in every worker; the serial one
    calls `serial` here (a trainer over this process's model) or else the factory.
    """
    if settings.executor == "serial":
        return SerialExecutor(serial() if serial is not None else factory(0), size)
    if settings.executor == "processes":
        from fedlm.sim.workers import ProcessExecutor

        return ProcessExecutor(factory, workers=settings.workers or cpu_count(), size=size,
                               client_timeout=settings.client_timeout_seconds)
    if settings.executor == "ray":
        from fedlm.sim.ray_executor import RayExecutor

        return RayExecutor(factory, workers=settings.workers, address=settings.address,
                           client_timeout=settings.client_timeout_seconds)
    raise ValueError(f"unknown simulation.executor {settings.executor!r}")
