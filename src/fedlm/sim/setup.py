"""Everything a simulation needs, loaded once: client work, base model, adapter, federated data, eval set."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fedlm.assembly import Assembly, assemble
from fedlm.config import DP_PER_SITE, ENCODER_KINDS, ConfigError, RunConfig
from fedlm.core.rng import make_rng
from fedlm.data.blocks import Blocks, concat_blocks, empty_blocks
from fedlm.data.folders import scan_folder
from fedlm.data.report import SKIPPED, raise_for_problems, report_dict, report_summary
from fedlm.data.textfiles import RECORD_READERS, TEXT_READERS
from fedlm.data.types import FederatedDataset
from fedlm.eval.metrics import EvalResult
from fedlm.eval.sites import pooled
from fedlm.models.base import BaseModel
from fedlm.models.lora import Adapter
from fedlm.updates.pipeline import Pipeline
from fedlm.work import ClientWork, EvalSet, make_work

log = logging.getLogger(__name__)
MAX_LOGGED_SKIPS = 20  # skipped files named one per line in the log; `fedlm data check` lists every one


@dataclass
class Simulation:
    config: RunConfig
    work: ClientWork
    base: BaseModel
    adapter: Adapter
    dataset: FederatedDataset
    population: tuple[str, ...]  # clients that may be sampled to train
    eval_clients: tuple[str, ...]
    eval_set: EvalSet  # everything scored: the held-out clients' test samples, or every site's together
    pipeline: Pipeline
    full_model_bytes: int  # the base model's weights in float32: what sending the whole model would cost
    train_cache: dict[str, Blocks] = field(default_factory=dict)
    residuals: dict[str, np.ndarray] = field(default_factory=dict)  # top-k error feedback, client-side state
    data_counts: dict[str, int] = field(default_factory=dict)  # samples, sequences, truncated, dropped (clients tokenized so far)
    eval_mode: str = "held_out"  # as picked from eval.mode (see pick_eval_mode)
    site_sets: dict[str, EvalSet] = field(default_factory=dict)  # per_site: each site's own test split
    shared_set: EvalSet | None = None  # per_site: questions of eval.multiple_choice's file, asked once, of no site
    data_files: dict | None = None  # data.source = "folder": files read, skipped, refused (check_data_folder)

    def train_blocks(self, client_id: str) -> Blocks:
        """A client's training samples, tokenized by the client work on first use (see `encode_population`).

        A client left with no sequence is refused before anything is counted or cached.
        """
        if client_id not in self.train_cache:
            encoded = self.work.encode(self.base.tokenizer, self.dataset.get(client_id).train)
            if len(encoded.blocks) == 0:
                raise ValueError(f"client {client_id!r} has no training sequence left: its {encoded.samples} samples were "
                                 f"all longer than data.seq_len = {self.config.data.seq_len} and data.overlong = 'drop' "
                                 "left them out; raise data.seq_len or use data.overlong = 'truncate'")
            for key, value in encoded.counts().items():
                self.data_counts[key] = self.data_counts.get(key, 0) + value
            self.train_cache[client_id] = encoded.blocks
        return self.train_cache[client_id]

    def encode_population(self) -> None:
        """Tokenize every training client now, so bad data stops the run before round 1 and the counts are whole."""
        for client_id in self.population:
            self.train_blocks(client_id)
        counts = self.data_counts
        if counts.get("truncated") or counts.get("dropped"):
            log.info("training data: %d samples of %d clients; %d cut at data.seq_len = %d, %d dropped (data.overlong)",
                     counts["samples"], len(self.population), counts["truncated"], self.config.data.seq_len, counts["dropped"])

    def evaluate(self):
        """The adapter as it stands, on the evaluation set (fedlm.eval.metrics.EvalResult)."""
        if self.site_sets:
            return pooled(self.evaluate_sites()) + self.evaluate_shared()
        return self.work.evaluate(self.adapter.model, self.eval_set)

    def evaluate_shared(self) -> EvalResult:
        """per_site: the questions that belong to no site (eval.multiple_choice's file), once."""
        return self.work.evaluate(self.adapter.model, self.shared_set) if self.shared_set else EvalResult()

    def evaluate_sites(self) -> dict[str, EvalResult]:
        """per_site: the adapter as it stands on each site's own test split (empty in held_out mode)."""
        return {site: self.work.evaluate(self.adapter.model, eval_set) for site, eval_set in self.site_sets.items()}


def check_data_folder(config: RunConfig) -> dict | None:
    """data.source = "folder": what will be read, skipped and refused, per client, before anything loads.

    Every file not read is named in the log with its reason; a refused file or a client left
    with no sample stops the run here, all of them listed at once (DataRefused). Returns the
    report's totals for summary.json (None for the embedded plays).
    """
    if config.data.source != "folder":
        return None
    readers = RECORD_READERS if config.task.kind == "instruction" else TEXT_READERS
    report = scan_folder(Path(config.data.path), encoding=config.data.encoding, readers=readers)
    log.info("data: %s", report_summary(report))
    unread = report.files(SKIPPED)
    for entry in unread[:MAX_LOGGED_SKIPS]:
        log.info("data: skipped %s (%s)", entry.path, entry.reason)
    if len(unread) > MAX_LOGGED_SKIPS:
        log.info("data: %d more skipped files; `fedlm data check %s` lists them all", len(unread) - MAX_LOGGED_SKIPS,
                 config.data.path)
    raise_for_problems(report)
    return report_dict(report)["totals"]


def load_dataset(config: RunConfig) -> FederatedDataset:
    return make_work(config).load_federation()


def pick_eval_mode(dataset: FederatedDataset, config: RunConfig) -> tuple[str, str]:
    """(mode, why): eval.mode, or under "auto" per_site for a few sites and held_out for a fleet.

    Holding out eval.clients whole clients needs many clients: with fewer than twice that
    many, auto evaluates every site on its own held-out split instead, and every site trains.
    """
    mode, wanted = config.eval.mode, 2 * config.eval.clients
    count = len(dataset.client_ids())
    if mode != "auto":
        return mode, f"eval.mode = {mode!r}"
    if config.task.kind in ENCODER_KINDS:  # they score held-out clients' own collections (no per_site yet)
        return "held_out", f"eval.mode = 'auto': task.kind = {config.task.kind!r} scores held-out clients"
    if count < wanted:
        if config.privacy.enabled:
            raise ConfigError(f"eval.mode: 'auto' would pick 'per_site' for {count} clients (fewer than 2 x eval.clients "
                              f"= {wanted}), and {DP_PER_SITE}")
        return "per_site", f"eval.mode = 'auto': {count} clients, fewer than 2 x eval.clients = {wanted}"
    return "held_out", f"eval.mode = 'auto': {count} clients, at least 2 x eval.clients = {wanted}"


def split_population(dataset: FederatedDataset, config: RunConfig, mode: str = "held_out") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training population, evaluation clients).

    held_out: a seeded choice of eval.clients clients that have test samples (kept out of
    training unless eval.held_out_clients is false). per_site: every client trains and every
    client with test samples is evaluated on them.
    """
    ids = dataset.client_ids()
    with_test = [c for c in ids if dataset.get(c).test]
    if mode == "per_site":
        if not with_test:
            raise ValueError(f"data set {dataset.name!r}: no client has test samples to evaluate on; "
                             "give each site more text or raise data.test_fraction")
        return tuple(ids), tuple(with_test)
    needed = config.eval.clients + (1 if config.eval.held_out_clients else 0)
    if len(with_test) < config.eval.clients or len(ids) < needed:
        raise ValueError(
            f"data set {dataset.name!r} has {len(ids)} clients ({len(with_test)} with test samples): "
            f"too few for eval.clients = {config.eval.clients}"
            + (" plus at least one training client" if config.eval.held_out_clients else "")
            + "; lower eval.clients, or use eval.mode = 'per_site' (every site trains and is evaluated on its own "
            "held-out split)"
        )
    rng = make_rng(config.run.seed, "eval-clients")
    chosen = tuple(sorted(with_test[i] for i in rng.choice(len(with_test), config.eval.clients, replace=False)))
    population = tuple(c for c in ids if c not in chosen) if config.eval.held_out_clients else ids
    return population, chosen


def describe_split(mode: str, why: str, dataset: FederatedDataset, population: tuple[str, ...],
                   eval_clients: tuple[str, ...]) -> str:
    """One line saying how the run is evaluated and which clients do not train (never silently)."""
    ids = dataset.client_ids()
    if mode == "per_site":
        unscored = len(ids) - len(eval_clients)
        return (f"evaluation: per site ({why}): all {len(ids)} clients train, each scored on its own held-out split"
                + (f"; {unscored} with no test samples are not scored" if unscored else ""))
    left_out = len(ids) - len(population)
    return (f"evaluation: held-out clients ({why}): {len(eval_clients)} clients scored"
            + (f", kept out of training; {len(population)} of {len(ids)} clients train" if left_out
               else f"; all {len(ids)} clients train (eval.held_out_clients = false)"))


def build_eval_set(work: ClientWork, tokenizer, dataset: FederatedDataset, clients: tuple[str, ...], config: RunConfig) -> EvalSet:
    """The evaluation clients' test samples, encoded by the client work and capped at eval.max_sequences."""
    return work.make_eval_set(tokenizer, {c: dataset.get(c).test for c in clients}, max_sequences=config.eval.max_sequences)


def partial_cohorts(config: RunConfig, population: tuple[str, ...], mode: str) -> str | None:
    """per_site with fewer sites per round than sites: say so, and how to train every site every round."""
    fed = config.federation
    if mode != "per_site" or fed.sampling != "fixed" or fed.clients_per_round >= len(population):
        return None
    return (f"each round trains a seeded sample of federation.clients_per_round = {fed.clients_per_round} of the "
            f"{len(population)} sites; set it to {len(population)} to train every site every round")


def join_eval_sets(sets: list[EvalSet], seq_len: int) -> EvalSet:
    """Several sites' evaluation sets as one (blocks in site order, every question, the counts summed)."""
    return EvalSet(concat_blocks([s.blocks for s in sets], seq_len), tuple(q for s in sets for q in s.questions),
                   truncated=sum(s.truncated for s in sets), dropped=sum(s.dropped for s in sets))


def prepare(config: RunConfig, *, encode_all: bool = True, report: bool = True) -> Simulation:
    """Load the data and the run's assembly (model, adapter at global version 0, pipeline).

    The data and the update pipeline are checked before the model loads, so a data set or a
    combination that cannot work fails in a second, not after the load. With `encode_all`,
    where the client work's encoding can refuse, cut or drop samples (instruction), every
    training client is tokenized before round 1; a worker process leaves it to the clients
    it is given. With `report` (off in worker processes: the main process did it) the data
    folder is checked file by file and how the run is evaluated is logged.
    """
    data_files = check_data_folder(config) if report else None
    work = make_work(config)
    dataset = work.load_federation()
    mode, why = pick_eval_mode(dataset, config)
    population, eval_clients = split_population(dataset, config, mode)
    if report:
        log.info(describe_split(mode, why, dataset, population, eval_clients))
        if (partial := partial_cohorts(config, population, mode)) is not None:
            log.info(partial)
    parts: Assembly = assemble(config, population=len(population), work=work)
    site_sets = {}
    shared_set = None
    if mode == "per_site":
        site_sets = {c: build_eval_set(work, parts.base.tokenizer, dataset, (c,), config) for c in eval_clients}
        if config.eval.multiple_choice.endswith(".jsonl"):  # the file's questions belong to no site: asked once
            shared_set = EvalSet(empty_blocks(config.data.seq_len), next(iter(site_sets.values())).questions)
            site_sets = {c: replace(e, questions=()) for c, e in site_sets.items()}
        eval_set = join_eval_sets([*site_sets.values(), *([shared_set] if shared_set else [])], config.data.seq_len)
    else:
        eval_set = build_eval_set(work, parts.base.tokenizer, dataset, eval_clients, config)
    adapter = parts.adapter
    full_model_bytes = 4 * sum(p.numel() * (2 if p.dtype == torch.uint8 else 1)  # 4-bit weights: two to a byte
                               for n, p in adapter.model.named_parameters() if "lora_" not in n)
    sim = Simulation(config, work, parts.base, adapter, dataset, population, eval_clients, eval_set, parts.pipeline,
                     full_model_bytes, eval_mode=mode, site_sets=site_sets, shared_set=shared_set, data_files=data_files)
    if encode_all and work.encodes_up_front:
        sim.encode_population()
    return sim
