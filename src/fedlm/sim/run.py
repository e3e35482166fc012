"""One simulation run end to end, with its run directory: the function behind `fedlm simulate`.

After every round the metrics line and a checkpoint are written, so `--resume` continues
a run (its privacy ledger included) from its last completed round. If a round fails or
the run is interrupted, the last committed global adapter is still exported and
summary.json says how the run ended. The trackers in tracking.report_to (fedlm.tracking) get
the config, each round's line and, at the end, the adapter and the run's status; a resumed
run continues them. Under policy.kind = "fedbuff" the asynchronous engine (sim.async_engine) runs
instead of synchronous rounds: a metrics line per server step, the same summary and adapter, but no
checkpoint, so `--resume` is refused for it. With clusters.count > 1 the clustered engine (sim.clustered) runs:
several globals, one metrics line a round with each global's figures, every global exported under adapters/<key>/
(adapter/ holds the first key's), and no checkpoint either.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.config import RunConfig, config_to_dict, load_config
from fedlm.monitoring.history import history_from_records
from fedlm.models.card import RunFacts, base_origin, model_card
from fedlm.data.redaction import redaction_summary
from fedlm.eval.sites import site_summary
from fedlm.models.lora import export_adapter
from fedlm.server.cluster_settings import check_cluster_combinations
from fedlm.server.policy_settings import check_policy_combinations
from fedlm.server.rounds import ServerState, initial_state
from fedlm.sim.async_engine import simulate_fedbuff
from fedlm.sim.clustered import (
    ClusteredResult, cluster_keys, cluster_summary, export_cluster_adapters, simulate_clustered,
)
from fedlm.sim.checkpoint import FINGERPRINT_KIND, checkpoint_meta, load_checkpoint_full, save_checkpoint
from fedlm.sim.engine import RunResult, privacy_fields, simulate
from fedlm.sim.events import Reporter
from fedlm.sim.rundir import (
    ADAPTER_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    append_metrics,
    check_run_dir,
    make_run_dir,
    read_metrics,
    run_fingerprint,
    run_identity,
    truncate_metrics,
    write_config,
    write_summary,
)
from fedlm.sim.setup import Simulation, prepare
from fedlm.tracking.libraries import check_installed
from fedlm.tracking.records import config_params
from fedlm.tracking.trackers import RunTrackers, open_trackers


def build_summary(sim: Simulation, result: RunResult | None, state: ServerState, status: str, seconds: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": status,
        "model": sim.config.model.name,
        "base_model_dir": str(sim.base.path),
        "dataset": sim.dataset.name,
        "population": len(sim.population),
        "eval_clients": len(sim.eval_clients),
        "data_files": sim.data_files,  # data.source = "folder": clients, files read, bytes, samples, skipped, refused
        "eval_mode": sim.eval_mode,  # held_out (clients kept for evaluation) or per_site (each site's own split)
        "seed": sim.config.run.seed,
        "rounds_done": state.rounds_done,
        "version": state.version,
        "update_size": int(state.global_vector.size),
        "update_bytes": int(state.global_vector.nbytes),
        "seconds": round(seconds, 2),
        "adapter_dir": ADAPTER_DIR,
        "pipeline": sim.pipeline.describe(),
        "task": sim.config.task.kind,
        # samples tokenized, cut at seq_len, dropped: every training client's where encoding can cut (instruction,
        # checked before round 1); the clients that trained where it cannot (causal_lm packs everything)
        "training_data": dict(sim.data_counts),
        "eval_data": sim.eval_set.counts(),  # the evaluation clients' test samples, and the questions asked
        "redaction": redaction_summary(sim.dataset, sim.config),  # placeholders per PII type in the data (None when off)
    }
    if hasattr(sim.work, "labels"):  # classify: the head's outputs in order, so the exported model can be read
        summary["labels"] = list(sim.work.labels())
    summary.update(privacy_fields(sim, state))
    summary.update(policy_fields(sim, result))
    if sim.config.clusters.enabled:
        summary["clusters"] = cluster_summary(sim.config.clusters, result)
    if result is not None:
        summary["base"] = result.base_eval.as_dict()
        summary["final"] = result.final_eval.as_dict()
        if result.final_sites:
            summary["base_sites"] = site_summary(result.base_sites)
            summary["final_sites"] = site_summary(result.final_sites)
        if result.stop_reason:
            summary["stop_reason"] = result.stop_reason
    return summary


def policy_fields(sim: Simulation, result: RunResult | None) -> dict[str, Any]:
    """On the virtual clock (policy.timed): the policy, and the simulated time (and FedBuff's refusals) at the end."""
    if not sim.config.policy.timed:
        return {}
    last = result.records[-1] if result is not None and result.records else {}
    return {"policy": sim.config.policy.kind, "sim_seconds": last.get("sim_seconds"),
            "refused_total": last.get("refused_total")}


def check_resume_config(saved: RunConfig, config: RunConfig) -> None:
    """A resumed run may only run longer, execute differently or report elsewhere: any other change would break the
    ledger or the optimizer state."""
    if config.federation.rounds != saved.federation.rounds and saved.privacy.mechanism == "banded_mf":
        raise ValueError(f"--resume cannot change federation.rounds ({saved.federation.rounds} -> "
                         f"{config.federation.rounds}) under privacy.mechanism = 'banded_mf': its factor and the "
                         "epsilon paid in round 1 are planned over the rounds of the run. Start a new run")
    if run_identity(config) != run_identity(saved):
        raise ValueError("--resume may change federation.rounds and how the run executes ([simulation], model.device, "
                         "model.threads, model.gradient_checkpointing) or is reported ([tracking]); every other setting "
                         "must match the run's config.toml")
    if config.federation.rounds != saved.federation.rounds and saved.client.lr_schedule != "constant":
        raise ValueError(f"--resume cannot change federation.rounds ({saved.federation.rounds} -> "
                         f"{config.federation.rounds}) under client.lr_schedule = {saved.client.lr_schedule!r}: the "
                         "learning rate decays over the planned rounds, so the rounds already run would not belong "
                         "to the new schedule. Start a new run for a longer schedule")


def check_checkpoint_owner(out: Path, config: RunConfig) -> None:
    """Refuse a checkpoint that another run wrote (other settings or seed) before anything resumes from it.

    A checkpoint from before fingerprints were kept, or whose fingerprint hashed every table (before
    FINGERPRINT_KIND; a later fedlm's added settings changed that hash), is taken only if metrics.jsonl
    holds a line for each of its rounds (the last one may be missing: the checkpoint is written
    first), as it does when both come from the same run; config.toml is checked either way.
    """
    meta = checkpoint_meta(out)
    saved, rounds_done = meta.get("run_fingerprint", ""), int(meta["rounds_done"])
    if saved and meta.get("fingerprint_kind") == FINGERPRINT_KIND:
        if saved != run_fingerprint(config):
            raise ValueError(f"{out}'s checkpoint was written by a run with other settings or another seed than its "
                             f"{CONFIG_FILE}; it cannot be resumed. Start a new run (another --out, or --overwrite)")
        return
    metrics = Path(out) / METRICS_FILE
    rounds = [r["round"] for r in read_metrics(out)] if metrics.is_file() else []
    if rounds != list(range(1, len(rounds) + 1)) or not rounds_done - 1 <= len(rounds) <= rounds_done:
        raise ValueError(f"{out}'s checkpoint holds {rounds_done} rounds but {METRICS_FILE} records {len(rounds)}: "
                         "they come from different runs, so it cannot be resumed. Start a new run")


def resume_state(sim: Simulation, out: Path) -> tuple[ServerState, dict[str, np.ndarray]]:
    state, private, residuals = load_checkpoint_full(out)
    if state.global_vector.size != sim.adapter.shared_spec.size:
        raise ValueError(f"{out}'s checkpoint holds {state.global_vector.size} values; this config's adapter has "
                         f"{sim.adapter.shared_spec.size}: resume with the run's own config")
    sim.residuals.update(residuals)
    truncate_metrics(out, state.rounds_done)
    return state, private


def start_trackers(config: RunConfig, out: Path, *, resume: bool) -> RunTrackers:
    """The run's trackers, each holding the config and every round metrics.jsonl already has (none for a new run)."""
    history = read_metrics(out) if (out / METRICS_FILE).is_file() else []
    return open_trackers(config.tracking, out, params=config_params(config_to_dict(config)), history=history, resume=resume)


def run_simulation(
    config: RunConfig, out: Path, *, overwrite: bool = False, reporter: Reporter | None = None, resume: bool = False
) -> dict[str, Any]:
    """Prepare, simulate every round, export the adapter and write summary.json; returns the summary."""
    check_installed(config.tracking)  # a missing tracking library stops the run before anything loads
    check_policy_combinations(config)  # what policy.kind = 'fedbuff' cannot account or run, before anything loads
    check_cluster_combinations(config)  # likewise for clusters.count > 1
    if resume and config.policy.kind == "fedbuff":
        raise ValueError("--resume is not supported for policy.kind = 'fedbuff' yet: the buffer, the clients in flight "
                         "and the virtual clock are not checkpointed; start a new run")
    if resume and config.clusters.enabled:
        raise ValueError(f"--resume is not supported for clusters.count = {config.clusters.count} yet: only one global "
                         "is checkpointed; start a new run")
    if resume and not (Path(out) / CONFIG_FILE).is_file():
        raise ValueError(f"--resume needs a run directory; {out} holds no {CONFIG_FILE}")
    if resume:
        check_resume_config(load_config(Path(out) / CONFIG_FILE), config)
        check_checkpoint_owner(Path(out), config)
    else:
        check_run_dir(out, overwrite=overwrite)
    started = time.perf_counter()
    sim = prepare(config)
    if config.clusters.enabled:
        cluster_keys(sim)  # clusters.assign = 'key': a count that does not match the segments, before the run dir is made
    if resume:
        start, private = resume_state(sim, Path(out))
    else:
        out = make_run_dir(out, overwrite=overwrite)
        start, private = None, {}
    out = Path(out)
    write_config(out, config)
    trackers = start_trackers(config, out, resume=resume)
    fingerprint = run_fingerprint(config)
    first = start if start is not None else initial_state(sim.adapter.initial_shared, sim.pipeline)
    last: dict[str, Any] = {"state": first, "eval": None}

    def on_record(record: dict[str, Any], state: ServerState) -> None:
        # the checkpoint (with the ledger) first: a crash after it loses only a metrics line,
        # never a released round that the ledger does not hold. fedbuff cannot resume (its buffer
        # and clients in flight are not saved), so it writes none.
        if config.policy.kind != "fedbuff" and not config.clusters.enabled:  # clusters: one checkpoint holds one global
            save_checkpoint(out, state, private, sim.residuals, fingerprint=fingerprint)
        append_metrics(out, record)
        trackers.log_round(record)
        last["state"], last["eval"] = state, record

    result, status = None, "failed"
    try:
        history = history_from_records(read_metrics(out)) if resume else None  # drift judged against the earlier rounds
        if config.clusters.enabled:
            result = simulate_clustered(sim, reporter, on_record=on_record, private_state=private)
        elif config.policy.kind == "fedbuff":
            result = simulate_fedbuff(sim, reporter, on_record=on_record, private_state=private)
        else:
            result = simulate(sim, reporter, on_record=on_record, private_state=private, start=start, monitor_history=history)
        status = "budget_exhausted" if result.stop_reason else "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        try:
            summary = finish_run(sim, out, result=result, last=last, status=status, started=started)
        finally:
            trackers.close(status, artifacts=(out / ADAPTER_DIR, out / CONFIG_FILE, out / SUMMARY_FILE))
    return summary


def finish_run(
    sim: Simulation, out: Path, *, result: RunResult | None, last: dict[str, Any], status: str, started: float,
) -> dict[str, Any]:
    """Export the last committed global adapter and write summary.json, however the run ended."""
    state = result.state if result is not None else last["state"]
    summary = build_summary(sim, result, state, status, time.perf_counter() - started)
    if result is None and last["eval"] is not None:
        summary["final"] = last["eval"]["eval"]
    base = base_origin(sim.config.model.name, sim.base.path)  # the base model named in the adapter and its card
    facts = RunFacts(config_to_dict(sim.config), summary, read_metrics(out) if (out / METRICS_FILE).is_file() else [])
    card = model_card(facts, base)
    if isinstance(result, ClusteredResult):  # every global under adapters/<key>/; adapter/ below holds the first key's
        summary["clusters"]["adapters"] = export_cluster_adapters(sim, result.states, out, base=base, card=card)
    export_adapter(sim.adapter, state.global_vector, out / ADAPTER_DIR, base=base, card=card)
    write_summary(out, summary)
    return summary
