"""Thread counts for client work, the same in every executor so that a seed fixes the result.

numpy's and scipy's BLAS run at one thread while clients train and updates are folded:
per-client vector work is memory-bound, and on a shared machine a second BLAS thread
mostly waits for a core (measured here: saxpy of 1M floats 0.28 ms at one thread,
1.6-2.3 ms at two on two busy cores). Reductions such as an update's clipping norm also
depend on how BLAS splits them, so every process uses the same count. torch's own
threads are model.threads where set, else the cores shared out among workers.
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController


@functools.cache
def controller() -> ThreadpoolController:
    """The thread pools of the libraries loaded by now (numpy's and scipy's BLAS are, by the engine)."""
    import scipy.linalg.blas  # noqa: F401 - load scipy's BLAS before the controller looks

    return ThreadpoolController()


def single_thread_blas() -> AbstractContextManager:
    """BLAS at one thread inside the `with` block, restored after."""
    return controller().limit(limits=1, user_api="blas")


def limit_blas_threads() -> None:
    """BLAS at one thread for the rest of this process (a worker's whole life)."""
    controller().limit(limits=1, user_api="blas")


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int) -> int:
    """torch threads for each of `workers` processes on this machine: its cores shared out."""
    return max(1, cpu_count() // workers)
