"""Per-client personalization on the plays: the global, fine-tuning, Ditto, a Reptile-trained global, private layers.

Every method is scored on each evaluation client's OWN test text (fedlm.eval.personalization)
and reported as a distribution over clients: mean, median and 90th percentile of the
per-client loss (lower is better, so p90 is the edge of the worst-served 10 %), the mean
perplexity, and the share of clients made worse than the FedAvg global, with wall times.

held-out speakers   FedAvg trains a global over the training speakers (rounds x clients_per_round
                    x local_steps); the held-out speakers are scored under it, after `steps` of
                    fine-tuning on their own training text (b), and after Ditto's personal step
                    from it (c; Li et al. 2021, arXiv:2012.04221).
Reptile (d)         A second global trained for fast adaptation: FedAvg with `reptile_steps` local
                    steps, a server step size `reptile_server_lr` and uniform client weights is
                    batched Reptile over clients (Nichol et al. 2018, arXiv:1803.02999; Jiang et al.
                    2019, arXiv:1909.12488), on the FedAvg global's training tokens. Scored as it
                    is and fine-tuned.
private (a)         A cross-silo run (data.min_lines = site_min_lines leaves a few large roles;
                    eval.mode = "per_site", every site trains every round) whose last
                    `private_layers` decoder layers' LoRA factors are private (lora.private): each
                    site under the global plus its own private layers, against the global with the
                    initial private layers, and fine-tuned from the global.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlm.config import RunConfig, apply_overrides
from fedlm.eval.personalization import PersonalReport, evaluate_personalization
from fedlm.experiment.compare import plain_config
from fedlm.experiment.methods import Log, RoundLog, federated_simulation, reset_adapter
from fedlm.experiment.personalize_settings import PersonalizeSettings
from fedlm.server.cluster_settings import ClusterSettings
from fedlm.sim.engine import simulate
from fedlm.sim.setup import Simulation, prepare


@dataclass(frozen=True)
class Row:
    """One line of a table: a method of a report, compared with the reference's per-client losses."""

    name: str
    label: str
    report: PersonalReport
    method: str
    reference: dict[str, float]  # the per-client losses of the table's reference (a global)
    seconds: float  # training, for a global's row; personalizing every client, for the others
    training_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "method": self.method,
                "summary": self.report.summary(self.method, self.reference).as_dict(),
                "seconds": round(self.seconds, 1), "training_tokens": self.training_tokens,
                "loss_by_client": self.report.methods[self.method].losses()}


@dataclass(frozen=True)
class Table:
    name: str  # "held_out" or "sites"
    title: str
    reference: str  # the row every share-worse figure compares with
    clients: int
    rows: list[Row]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "reference": self.reference, "clients": self.clients,
                "rows": [row.as_dict() for row in self.rows]}


# --- the runs' configurations, built (and so checked) before the model loads -----------------------------


def held_out_config(config: RunConfig, settings: PersonalizeSettings) -> RunConfig:
    """Plain FedAvg (no DP, compression, SecAgg or clusters) over the speakers that are not held out."""
    return apply_overrides(dataclasses.replace(plain_config(config), clusters=ClusterSettings()), {
        "federation": {"rounds": settings.rounds, "clients_per_round": settings.clients_per_round, "sampling": "fixed"},
        "client": {"local_steps": settings.local_steps},
        "eval": {"mode": "held_out", "clients": settings.eval_clients, "max_sequences": settings.eval_sequences,
                 "multiple_choice": "off"},
    })


def reptile_config(config: RunConfig, settings: PersonalizeSettings) -> RunConfig:
    """FedAvg as batched Reptile: more local steps, fewer clients, a server step size, every client weighing the same."""
    return apply_overrides(config, {"federation": {"clients_per_round": settings.reptile_clients_per_round},
                                    "client": {"local_steps": settings.reptile_steps},
                                    "strategy": {"server_lr": settings.reptile_server_lr, "weighting": "uniform"}})


def private_config(config: RunConfig, settings: PersonalizeSettings, layers: int) -> RunConfig:
    """The cross-silo run: the large roles as sites, each on its own split, the last decoder layers' factors private."""
    if settings.private_layers >= layers:
        raise ValueError(f"experiment.private_layers = {settings.private_layers} leaves no shared layer: the model has "
                         f"{layers} decoder layers")
    patterns = [f"*layers.{i}.*" for i in range(layers - settings.private_layers, layers)]
    return apply_overrides(config, {"data": {"min_lines": settings.site_min_lines}, "eval": {"mode": "per_site"},
                                    "lora": {"private": patterns}})


# --- training a global and personalizing from it ------------------------------------------------------------


def train_global(sim: Simulation, name: str, log: Log,
                 private_state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, float, int]:
    """(global vector, wall seconds, training tokens) of a run of `sim`'s configuration from the initial adapter."""
    started = time.perf_counter()
    reset_adapter(sim.adapter)
    result = simulate(sim, RoundLog(name, log), private_state=private_state)
    seconds = time.perf_counter() - started
    log(f"{name}: {len(result.records)} rounds in {seconds:.0f} s, pooled loss {result.base_eval.loss:.4f} -> "
        f"{result.final_eval.loss:.4f}")
    tokens = sum(record["train_tokens"] or 0 for record in result.records)
    return result.state.global_vector.copy(), seconds, tokens


def personalize(sim: Simulation, global_vector: np.ndarray, methods: Sequence[str], settings: PersonalizeSettings,
                name: str, log: Log, private_state: dict[str, np.ndarray] | None = None) -> PersonalReport:
    started = time.perf_counter()
    report = evaluate_personalization(sim, global_vector, methods=methods, settings=settings.personal(),
                                      private_state=private_state,
                                      on_client=lambda done, total: log(f"  {name}: client {done}/{total}"))
    log(f"{name}: {len(report.clients)} clients in {time.perf_counter() - started:.0f} s")
    return report


def held_out_table(config: RunConfig, settings: PersonalizeSettings, log: Log) -> tuple[Table, int]:
    """The held-out speakers' table, and the model's decoder layer count (for the private run)."""
    sim = prepare(config)
    layers = sim.base.model.config.num_hidden_layers
    if settings.private_layers:
        private_config(config, settings, layers)  # checked before anything trains
    log(f"loaded {config.model.name}: {len(sim.population)} training speakers, {len(sim.eval_clients)} held out")
    fedavg, fedavg_s, fedavg_tokens = train_global(sim, "FedAvg", log)
    reptile_sim = federated_simulation(sim, reptile_config(config, settings), sim.population)
    reptile, reptile_s, reptile_tokens = train_global(reptile_sim, "Reptile", log)
    first = personalize(sim, fedavg, ("global", "finetune", "ditto"), settings, "FedAvg personalization", log)
    second = personalize(reptile_sim, reptile, ("global", "finetune"), settings, "Reptile personalization", log)
    reference = first.methods["global"].losses()
    seconds = {name: first.methods[name].seconds for name in ("finetune", "ditto")}
    rows = [
        Row("fedavg_global", "FedAvg global (reference)", first, "global", reference, fedavg_s, fedavg_tokens),
        Row("fedavg_finetune", "FedAvg + finetune (b)", first, "finetune", reference, seconds["finetune"], fedavg_tokens),
        Row("fedavg_ditto", "FedAvg + Ditto (c)", first, "ditto", reference, seconds["ditto"], fedavg_tokens),
        Row("reptile_global", "Reptile global (d)", second, "global", reference, reptile_s, reptile_tokens),
        Row("reptile_finetune", "Reptile + finetune (d)", second, "finetune", reference,
            second.methods["finetune"].seconds, reptile_tokens),
    ]
    title = "Held-out speakers, each on its own test text (reference: the FedAvg global)"
    return Table("held_out", title, "fedavg_global", len(first.clients), rows), layers


def sites_table(config: RunConfig, settings: PersonalizeSettings, layers: int, log: Log) -> Table:
    """The cross-silo run with the last `settings.private_layers` of `layers` decoder layers private."""
    config = private_config(config, settings, layers)
    sim = prepare(config)
    sites = len(sim.population)
    sim = federated_simulation(sim, apply_overrides(config, {"federation": {"clients_per_round": sites}}), sim.population)
    log(f"per-site run: {sites} sites, every site every round, last {settings.private_layers} decoder layer(s) private")
    private: dict[str, np.ndarray] = {}
    vector, seconds, tokens = train_global(sim, "per-site run", log, private_state=private)
    report = personalize(sim, vector, ("global", "private", "finetune"), settings, "sites", log, private_state=private)
    reference = report.methods["global"].losses()
    rows = [
        Row("site_global", f"global, initial private layers ({sites} sites)", report, "global", reference, seconds, tokens),
        Row("site_private", "global + own private layers (a)", report, "private", reference,
            report.methods["private"].seconds, tokens),
        Row("site_finetune", "global + finetune (b)", report, "finetune", reference, report.methods["finetune"].seconds,
            tokens),
    ]
    title = (f"Sites with their last {settings.private_layers} decoder layer(s) private (per_site), each on its own "
             "test split (reference: the global with the initial private layers)")
    return Table("sites", title, "site_global", len(report.clients), rows)


def run_personalization(config: RunConfig, settings: PersonalizeSettings, log: Log | None = None) -> dict[str, Any]:
    """Train the globals, personalize every evaluation client, and return everything the report writes."""
    log = log or (lambda message: None)
    started = time.perf_counter()
    held_out = held_out_config(config, settings)
    reptile_config(held_out, settings)  # checked before the model loads
    table, layers = held_out_table(held_out, settings, log)
    tables = [table]
    if settings.private_layers:
        tables.append(sites_table(held_out, settings, layers, log))
    return {
        "model": config.model.name,
        "task": config.task.kind,
        "seed": config.run.seed,
        "seq_len": config.data.seq_len,
        "batch_size": config.client.batch_size,
        "client_lr": config.client.lr,
        "experiment": dataclasses.asdict(settings),
        "tables": [t.as_dict() for t in tables],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
