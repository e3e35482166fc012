"""Personalization evaluated per client: each evaluation client's own test text, under each way of personalizing.

Users judge a personalized model client by client, so every method is scored on every
evaluation client's OWN test text (its test samples alone, through `work.make_eval_set`) and
reported as a distribution over clients, each client counting once, beside the same clients
under the global model (Wang et al. 2019, "Federated Evaluation of On-device
Personalization", arXiv:1910.10252, report personalization this way).

Methods, all starting from one trained global vector:

global    the global adapter as it is, private parameters at their initial values: the reference.
finetune  a few local optimizer steps from the global on the client's own training text: the
          client's training loop (client.train.run_task), seeded as that client's round-1 task.
ditto     Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization",
          arXiv:2012.04221: a personal adapter v trained on the client's own text under
          F_k(v) + lambda/2 ||v - w_global||^2 (shared parameters; private ones train freely).
          For held-out clients, who took no part in training, this is Ditto's personal step
          run at evaluation time from w_global. It is solved by forward-backward splitting:
          each step the client's optimizer steps on F_k, then the proximal map of the term at
          that step's rate, v <- w + (v - w) / (1 + lr * lambda), pulls v toward the global.
          With plain SGD that is the proximal-gradient method for Ditto's objective. Why not
          the paper's explicit gradient (client.train.prox_hook, as FedProx's client uses):
          under SGD it diverges once lr * lambda > 2, and under AdamW the optimizer divides a
          gradient term's scale away, so a huge lambda does not hold v at the global (the
          reason AdamW decouples weight decay). lambda = 0 is finetune; lambda -> inf the global.
private   for a run with lora.private in eval.mode = "per_site": the global plus the site's own
          private parameters (simulate(sim, private_state=...) keeps them) against the global
          with the initial private parameters. A site never sampled has none: it is scored with
          the initial ones and named in `fallback`.

Reptile-style meta-learning (Nichol et al. 2018, arXiv:1803.02999) is a way to TRAIN the
global, not an evaluation: FedAvg with several local steps, a server step size below 1
(strategy.server_lr) and uniform client weights is batched Reptile over clients (Jiang et al.
2019, arXiv:1909.12488, read FedAvg as meta-learning). benchmarks/personalization.py trains
such a global and scores it here with "finetune" (docs/personalization.md).

Every method restores the adapter (shared and private vectors) and the torch random state
as they were, after every client, so nothing leaks from one client or method to the next.
Results are numbers by client id, never text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedlm.client.train import StepCallback, run_task
from fedlm.config import ClientSettings
from fedlm.core.types import Task
from fedlm.eval.metrics import EvalResult
from fedlm.models.device import model_device
from fedlm.models.lora import Adapter
from fedlm.work import EvalSet

if TYPE_CHECKING:
    from fedlm.sim.setup import Simulation

METHODS = ("global", "finetune", "ditto", "private")
REFERENCE = "global"
WORST_PERCENTILE = 90  # lower loss is better: the worst-served 10 % of clients lie above the 90th percentile of loss


@dataclass(frozen=True)
class PersonalSettings:
    """How finetune and ditto personalize, and how much of each client's own test text is scored."""

    steps: int = 4  # local optimizer steps of finetune and ditto (0: the global itself)
    lr: float = 1e-3  # their constant learning rate, with client.optimizer and client.batch_size
    ditto_lambda: float = 100.0  # Ditto's lambda; each step keeps 1 / (1 + lr * lambda) of v - w_global (here 0.91)
    max_sequences: int = 16  # each client's own test text: at most this many blocks of data.seq_len

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"personalization steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"personalization lr must be > 0, got {self.lr}")
        if not self.ditto_lambda >= 0:
            raise ValueError(f"personalization ditto_lambda must be >= 0, got {self.ditto_lambda}")
        if self.max_sequences < 1:
            raise ValueError(f"personalization max_sequences must be >= 1, got {self.max_sequences}")


@dataclass(frozen=True)
class Distribution:
    """One method over clients, every client counting once. Loss is the mean next-token loss (nats) of a client's own
    test tokens; perplexity = exp(loss), its percentiles taken over the clients' perplexities. Lower is better, so
    `p90_*` is the boundary of the worst-served 10 % of clients. `share_worse`: the share of clients whose loss is
    strictly above their loss under the reference (the global); `mean_change`: mean of (loss - reference loss)."""

    clients: int
    mean_loss: float
    median_loss: float
    p90_loss: float
    mean_perplexity: float
    median_perplexity: float
    p90_perplexity: float
    share_worse: float
    mean_change: float

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class MethodScores:
    """One method's result on each client's own test text, by client id."""

    method: str
    results: Mapping[str, EvalResult]
    seconds: float
    fallback: tuple[str, ...] = ()  # private: sites with no private parameters of their own, scored with the initial ones

    def losses(self) -> dict[str, float]:
        return {client: result.loss for client, result in self.results.items()}


@dataclass(frozen=True)
class PersonalReport:
    clients: tuple[str, ...]
    methods: Mapping[str, MethodScores]
    settings: PersonalSettings = field(default_factory=PersonalSettings)

    def summary(self, method: str, reference: Mapping[str, float] | None = None) -> Distribution:
        """`method` over clients, compared with the global of this report (or another method's `reference` losses)."""
        return summarize(self.methods[method].losses(), self.methods[REFERENCE].losses() if reference is None else reference)

    def as_dict(self) -> dict:
        return {"clients": len(self.clients), "settings": asdict(self.settings),
                "methods": {name: {"summary": self.summary(name).as_dict(), "seconds": scores.seconds,
                                   "fallback": len(scores.fallback), "loss_by_client": scores.losses()}
                            for name, scores in self.methods.items()}}


def summarize(losses: Mapping[str, float], reference: Mapping[str, float]) -> Distribution:
    """The distribution of per-client `losses`, and how they compare with the same clients' `reference` losses."""
    if not losses:
        raise ValueError("no client to summarize")
    if set(losses) != set(reference):
        raise ValueError(f"the method scored {len(losses)} clients and the reference {len(reference)}: not the same clients")
    clients = sorted(losses)
    loss = np.array([losses[c] for c in clients], dtype=np.float64)
    base = np.array([reference[c] for c in clients], dtype=np.float64)
    perplexity = np.exp(loss)
    return Distribution(
        clients=len(clients),
        mean_loss=float(loss.mean()),
        median_loss=float(np.median(loss)),
        p90_loss=float(np.percentile(loss, WORST_PERCENTILE)),
        mean_perplexity=float(perplexity.mean()),
        median_perplexity=float(np.median(perplexity)),
        p90_perplexity=float(np.percentile(perplexity, WORST_PERCENTILE)),
        share_worse=float(np.mean(loss > base)),
        mean_change=float(np.mean(loss - base)),
    )


def own_test_sets(sim: Simulation, clients: Sequence[str], max_sequences: int) -> dict[str, EvalSet]:
    """Each client's own test samples alone, encoded by the client work (loss only: no multiple-choice questions)."""
    tokenizer = sim.base.tokenizer
    sets = {c: replace(sim.work.make_eval_set(tokenizer, {c: sim.dataset.get(c).test}, max_sequences=max_sequences),
                       questions=()) for c in clients}
    empty = [c for c, s in sets.items() if len(s.blocks) == 0]
    if empty:
        raise ValueError(f"{len(empty)} of {len(sets)} clients have no test sequence to score (first: {empty[0]!r}); "
                         "pick clients with test samples")
    return sets


def personal_client_settings(client: ClientSettings, settings: PersonalSettings) -> ClientSettings:
    """The run's client settings for a personal step: `settings.steps` steps at a constant `settings.lr`, no FedProx."""
    return replace(client, local_steps=max(settings.steps, 1), lr=settings.lr, prox_mu=0.0, lr_schedule="constant",
                   warmup_steps=0, min_lr_ratio=0.0)


def proximal_map(adapter: Adapter, global_vector: np.ndarray, strength: float) -> StepCallback:
    """After an optimizer step: v <- w + (v - w) / (1 + strength) on the shared parameters, strength = lr * lambda.

    The proximal map of lambda/2 ||v - w||^2 with step lr (exact for any strength: no divergence).
    """
    device = model_device(adapter.model)
    anchors = [torch.from_numpy(global_vector[e.offset : e.stop]).view(e.shape).to(device)
               for e in adapter.shared_spec.entries]
    shrink = 1.0 / (1.0 + strength)

    def pull_toward_global(step: int, loss: float) -> None:
        with torch.no_grad():
            for p, anchor in zip(adapter.shared_params, anchors, strict=True):
                p.sub_(anchor).mul_(shrink).add_(anchor)

    return pull_toward_global


def train_personal(sim: Simulation, client: str, global_vector: np.ndarray, settings: PersonalSettings, *,
                   ditto_lambda: float) -> None:
    """Leave in the adapter the client's personal model: `settings.steps` steps from the global on its own training
    text (ditto_lambda = 0: plain fine-tuning), seeded as the client's round-1 task (client.train.run_task)."""
    adapter = sim.adapter
    if settings.steps == 0:
        adapter.write_shared(global_vector)
        adapter.write_private(adapter.initial_private)
        return
    client_settings = personal_client_settings(sim.config.client, settings)
    pull = proximal_map(adapter, global_vector, client_settings.lr * ditto_lambda) if ditto_lambda > 0 else None
    run_task(adapter, Task(round=1, version=0, client_id=client), global_vector=global_vector,
             private_vector=adapter.initial_private.copy(), train_blocks=sim.train_blocks(client),
             settings=client_settings, seed=sim.config.run.seed, out=np.empty_like(global_vector), on_step=pull,
             loss_fn=sim.work.loss, rounds=1)


@dataclass(frozen=True)
class Context:
    """What every method's turn on a client reads."""

    sim: Simulation
    global_vector: np.ndarray
    private_state: Mapping[str, np.ndarray]
    settings: PersonalSettings


def score_global(ctx: Context, client: str, eval_set: EvalSet) -> EvalResult:
    ctx.sim.adapter.write_shared(ctx.global_vector)
    ctx.sim.adapter.write_private(ctx.sim.adapter.initial_private)
    return ctx.sim.work.evaluate(ctx.sim.adapter.model, eval_set)


def score_private(ctx: Context, client: str, eval_set: EvalSet) -> EvalResult:
    adapter = ctx.sim.adapter
    adapter.write_shared(ctx.global_vector)
    adapter.write_private(ctx.private_state.get(client, adapter.initial_private))
    return ctx.sim.work.evaluate(adapter.model, eval_set)


def score_finetune(ctx: Context, client: str, eval_set: EvalSet) -> EvalResult:
    train_personal(ctx.sim, client, ctx.global_vector, ctx.settings, ditto_lambda=0.0)
    return ctx.sim.work.evaluate(ctx.sim.adapter.model, eval_set)


def score_ditto(ctx: Context, client: str, eval_set: EvalSet) -> EvalResult:
    train_personal(ctx.sim, client, ctx.global_vector, ctx.settings, ditto_lambda=ctx.settings.ditto_lambda)
    return ctx.sim.work.evaluate(ctx.sim.adapter.model, eval_set)


SCORERS: dict[str, Callable[[Context, str, EvalSet], EvalResult]] = {
    "global": score_global, "finetune": score_finetune, "ditto": score_ditto, "private": score_private,
}


def check_request(sim: Simulation, global_vector: np.ndarray, methods: Sequence[str],
                  private_state: Mapping[str, np.ndarray] | None) -> None:
    """Refuse, before anything changes, a method fedlm does not know or a "private" the run cannot score."""
    unknown = [m for m in methods if m not in SCORERS]
    if unknown:
        raise ValueError(f"unknown personalization method(s) {unknown}; known: {', '.join(METHODS)}")
    if global_vector.shape != (sim.adapter.shared_spec.size,):
        raise ValueError(f"the global vector has shape {global_vector.shape}, the adapter's shared parameters "
                         f"{sim.adapter.shared_spec.size} values")
    if "private" in methods:
        if sim.adapter.private_spec.size == 0:
            raise ValueError("personalization 'private' needs private parameters: set lora.private (fnmatch patterns)")
        if sim.eval_mode != "per_site":
            raise ValueError(f"personalization 'private' needs eval.mode = 'per_site' (every site trains and keeps its "
                             f"private parameters); this run evaluates {sim.eval_mode!r}, whose clients never trained")
        if private_state is None:
            raise ValueError("personalization 'private' needs the sites' private parameters: "
                             "pass the dict that simulate(sim, private_state=...) filled")


def evaluate_personalization(
    sim: Simulation,
    global_vector: np.ndarray,
    *,
    methods: Sequence[str] = ("global", "finetune", "ditto"),
    settings: PersonalSettings | None = None,
    private_state: Mapping[str, np.ndarray] | None = None,
    clients: Sequence[str] | None = None,
    on_client: Callable[[int, int], None] | None = None,
) -> PersonalReport:
    """Every method of `methods` (and always "global", the reference) on each client's own test text.

    `clients` defaults to the run's evaluation clients; `on_client(done, total)` is called after
    each. The adapter and the torch random state are left as they were found.
    """
    settings = settings or PersonalSettings()
    check_request(sim, global_vector, methods, private_state)
    clients = tuple(sim.eval_clients if clients is None else clients)
    eval_sets = own_test_sets(sim, clients, settings.max_sequences)
    ctx = Context(sim, global_vector, private_state or {}, settings)
    order = (REFERENCE, *[m for m in dict.fromkeys(methods) if m != REFERENCE])
    results: dict[str, dict[str, EvalResult]] = {m: {} for m in order}
    seconds = dict.fromkeys(order, 0.0)
    adapter = sim.adapter
    saved_shared = adapter.read_shared(np.empty(adapter.shared_spec.size, np.float32))
    saved_private = adapter.read_private(np.empty(adapter.private_spec.size, np.float32))
    with torch.random.fork_rng():
        try:
            for done, client in enumerate(clients, start=1):
                for method in order:
                    started = time.perf_counter()
                    results[method][client] = SCORERS[method](ctx, client, eval_sets[client])
                    seconds[method] += time.perf_counter() - started
                    adapter.write_shared(saved_shared)
                    adapter.write_private(saved_private)
                if on_client is not None:
                    on_client(done, len(clients))
        finally:
            adapter.write_shared(saved_shared)
            adapter.write_private(saved_private)
    fallback = tuple(c for c in clients if c not in ctx.private_state) if "private" in order else ()
    scores = {m: MethodScores(m, results[m], seconds[m], fallback if m == "private" else ()) for m in order}
    return PersonalReport(clients, scores, settings)

