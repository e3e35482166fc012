"""The peer benchmark's trivial workload on Apple's pfl 0.6 simulator (PyTorch, one process).

Run inside the pfl virtual environment that benchmarks/peers/run.py creates:
    ~/.cache/fedlm/peer-venvs/pfl/bin/python benchmarks/peers/pfl_workload.py \
        --clients 100 --params 1000000 --rounds 5

How it uses pfl (the parts its docs wire together for a simulation):
    - model: pfl.model.pytorch.PyTorchModel around a torch module holding P float32
      weights, whose loss is -CONSTANT * sum(weights): one local SGD step of learning
      rate 1 moves every weight by +CONSTANT, so a client "returns what it received plus
      CONSTANT" through pfl's real local-training path (restore the central weights, train,
      take the model difference). Central optimizer: SGD with learning rate 1, so the
      averaged difference is applied as is.
    - data: pfl.data.FederatedDataset.from_slices with N users of one data point each and
      the "minimize_reuse" user sampler (it cycles through the users), so a cohort of N
      is every client in every round.
    - algorithm and backend: pfl.algorithm.FederatedAveraging run on
      pfl.aggregate.simulate.SimulatedBackend (sum of the users' differences, then the
      average), train_cohort_size = N, no evaluation cohort. pfl evaluates each user's
      loss before and after local training at central iteration 0 whatever the
      evaluation_frequency; that falls into the warm-up round, which is not in the median.

Threads: --torch-threads (default 1) sets torch's intra-op threads. On this machine's 2
shared cores, torch's default of 2 OpenMP threads ran pfl 3x to 9x slower whenever other
processes held a core (measured: 100 x 1e6, 2.26 s a round with 2 threads against 0.64 s
with 1, load average 5.6), so one thread is pfl's best setting here.

Timing: a TrainingProcessCallback stamps the clock at on_train_begin and after each
central iteration; the time between stamps is one round.

Prints one line `PEER_RESULT {json}` (see round_timing.py) after checking that every global
value is rounds * CONSTANT.
"""

from __future__ import annotations

import argparse
import resource
from importlib.metadata import version
import sys
import time

import numpy as np
import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel

from round_timing import CONSTANT, check_global, emit, parse_workload_args, summarize


class AddConstantModule(torch.nn.Module):
    """P weights; the loss's gradient is -CONSTANT everywhere, so SGD at lr 1 adds CONSTANT."""

    def __init__(self, params: int) -> None:
        super().__init__()
        self.weights = torch.nn.Parameter(torch.zeros(params, dtype=torch.float32))

    def loss(self, data: torch.Tensor) -> torch.Tensor:
        return -CONSTANT * self.weights.sum()

    def metrics(self, data: torch.Tensor, eval: bool = False) -> dict[str, Weighted]:  # noqa: A002
        return {"loss": Weighted(float(self.loss(data).detach()), 1)}


class RoundClock(TrainingProcessCallback):
    """Time stamps at the start of training and after each central iteration."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, *, model) -> Metrics:
        self.marks.append(time.perf_counter())
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        self.marks.append(time.perf_counter())
        return False, Metrics()


def make_users(clients: int) -> FederatedDataset:
    """N users of one data point each; the sampler cycles through them in order."""
    user_ids = list(range(clients))
    data = {user_id: [np.zeros(1, dtype=np.float32)] for user_id in user_ids}
    return FederatedDataset.from_slices(data, get_user_sampler("minimize_reuse", user_ids))


def add_torch_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")


def main() -> None:
    args = parse_workload_args(__doc__.splitlines()[0], add_torch_threads)
    if args.torch_threads < 1:
        raise SystemExit("--torch-threads must be at least 1")
    torch.set_num_threads(args.torch_threads)
    module = AddConstantModule(args.params)
    model = PyTorchModel(
        model=module,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    users = make_users(args.clients)
    clock = RoundClock()
    started = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            evaluation_frequency=args.rounds + 1,
            train_cohort_size=args.clients,
            val_cohort_size=0,
        ),
        backend=SimulatedBackend(training_data=users, val_data=users),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_num_epochs=1, local_learning_rate=1.0, local_batch_size=None
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[clock],
    )
    finished = time.perf_counter()
    if len(clock.marks) != args.rounds + 1:
        raise SystemExit(f"pfl ran {max(len(clock.marks) - 1, 0)} of {args.rounds} rounds")
    weights = module.weights.detach()
    check_global(float(weights.min()), float(weights.max()), args.rounds)
    round_seconds = [later - earlier for earlier, later in zip(clock.marks, clock.marks[1:])]
    emit(
        {
            "framework": "pfl",
            "version": f"pfl {version('pfl')}, torch {torch.__version__}, {torch.get_num_threads()} threads",
            "clients": args.clients,
            "params": args.params,
            "rounds": args.rounds,
            **summarize(round_seconds),
            "total_seconds": finished - started,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
