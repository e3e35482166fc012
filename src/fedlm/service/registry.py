"""The model registry: every round commits a version; a canary gate decides which one serves.

A new version whose held-out evaluation loss is worse than the production version's by
more than `registry.canary_margin`, overall or on any slice of the evaluation folder (each
sub-folder of `registry.eval_data` is a slice: a site, a language, a kind of document), is
not promoted. With `registry.on_regression = "hold"` it is kept and training goes on from
it (one noisy round must not fork the run); with "rollback" training goes back to the
production version (the coordinator commits a copy of it as the next version, so every
task still names the version whose blob it downloads). `rollback` points production at
any stored version. Export writes a version as a PEFT adapter directory that loads as it is (with a model
card), or as the base model with the adapter merged in.
"""

from __future__ import annotations

import dataclasses

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.config import RunConfig
from fedlm.service import store as db
from fedlm.service.blobs import BlobStore
from fedlm.service.payloads import decode_state



@dataclass(frozen=True)
class Evaluation:
    """A version's held-out loss over the whole evaluation folder, and per slice (its sub-folders) when it has several."""

    loss: float
    slices: dict[str, float] = field(default_factory=dict)


Evaluator = Callable[[np.ndarray], "float | Evaluation"]


def as_evaluation(value: float | Evaluation) -> Evaluation:
    return value if isinstance(value, Evaluation) else Evaluation(float(value))


def regressed_slices(new: Mapping[str, float], production: Mapping[str, float], margin: float) -> list[str]:
    """The slices both versions were scored on whose new loss is worse than production's by more than `margin`
    (a new loss that is not finite counts as worse), in name order."""
    worse = []
    for name in sorted(set(new) & set(production)):
        before, after = production[name], new[name]
        if math.isfinite(before) and not (math.isfinite(after) and after <= before + margin):
            worse.append(name)
    return worse


def should_promote(new_loss: float | None, production_loss: float | None, margin: float) -> bool:
    """Promote unless both losses are known and the new one is worse by more than `margin`."""
    if new_loss is None or production_loss is None or not math.isfinite(production_loss):
        return True
    return math.isfinite(new_loss) and new_loss <= production_loss + margin


def list_versions(store: db.Store) -> list[dict[str, Any]]:
    with store.session() as session:
        production = db.production_version(session)
        return [
            {"version": v.version, "round": v.round, "status": v.status, "production": v.version == production,
             "global_sha256": v.global_sha256, "metrics": v.metrics, "created_at": v.created_at}
            for v in db.versions(session)
        ]


def rollback(store: db.Store, version: int) -> None:
    """Point production at `version`; refused for a version that does not exist."""
    with store.session() as session:
        if session.get(db.VersionRow, version) is None:
            raise ValueError(f"no model version {version}; `fedlm models list` shows them")
        previous = db.production_version(session)
        db.set_production(session, version)
        db.audit(session, "rollback", detail=f"production {previous} -> {version}")


def version_vector(store: db.Store, blobs: BlobStore, version: int) -> np.ndarray:
    with store.session() as session:
        row = session.get(db.VersionRow, version)
        if row is None:
            raise ValueError(f"no model version {version}; `fedlm models list` shows them")
        sha = row.state_sha256
    return decode_state(blobs.read(sha)).global_vector


def export_version(
    store: db.Store, blobs: BlobStore, run: RunConfig, version: int, directory: Path, *, merged: bool = False,
    overwrite: bool = False, tool_version: str = "",
) -> Path:
    """Write `version` as a PEFT adapter dir (adapter_config.json + adapter_model.safetensors + README.md model card),
    or with `merged` as the base model with the adapter merged in; `directory` is written whole or not at all."""
    from fedlm.assembly import assemble_model
    from fedlm.models.card import base_origin, model_card
    from fedlm.models.lora import export_adapter, save_merged
    from fedlm.models.output_dir import check_output_dir

    check_output_dir(Path(directory), overwrite=overwrite)  # before the model loads
    vector = version_vector(store, blobs, version)
    facts = version_facts(store, run, version)
    # on the CPU, unquantized: an export needs no accelerator, and merging into 4-bit weights would round them
    _, base, adapter = assemble_model(replace(run, model=replace(run.model, device="cpu", load_in_4bit=False)))
    if vector.size != adapter.shared_spec.size:
        raise ValueError(f"version {version} holds {vector.size} values; the run config's adapter has {adapter.shared_spec.size}")
    origin = base_origin(run.model.name, base.path)
    card = model_card(facts, origin, merged=merged, tool_version=tool_version)
    if not merged:
        return export_adapter(adapter, vector, Path(directory), base=origin, card=card, overwrite=overwrite)
    adapter.write_shared(vector)
    adapter.write_private(adapter.initial_private)
    return save_merged(adapter.model, base.tokenizer, Path(directory), card=card, overwrite=overwrite)


def version_facts(store: db.Store, run: RunConfig, version: int):
    """What the store knows of `version` as the model card reads a run: settings, rounds, clients, losses, privacy."""
    from fedlm.config import config_to_dict
    from fedlm.models.card import RunFacts

    with store.session() as session:
        row = session.get(db.VersionRow, version)
        if row is None:
            raise ValueError(f"no model version {version}; `fedlm models list` shows them")
        rows = [(v.round, dict(v.metrics)) for v in db.versions(session) if 0 < v.version <= version]
        contributors = sum(1 for last in db.last_rounds(session).values() if last > 0)
        metrics, round_done, status = dict(row.metrics), row.round, row.status
    records = [{"round": r, "accepted": m.get("accepted", 0), "train_loss": m.get("train_loss"),
                "eval": held_out(m.get("eval_loss"))} for r, m in rows]
    summary = {"status": f"version {status}", "rounds_done": round_done, "version": version, "population": contributors,
               "evaluated_on": "the coordinator's held-out text (registry.eval_data)",
               "final": held_out(metrics.get("eval_loss")),
               **{k: metrics[k] for k in ("epsilon", "delta", "noise_multiplier") if metrics.get(k) is not None}}
    return RunFacts(config=config_to_dict(run), summary=summary, records=records)


def held_out(loss: float | None) -> dict[str, float]:
    if loss is None or not math.isfinite(loss):
        return {}
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def make_evaluator(parts: Any, eval_data: Path, *, max_sequences: int) -> Evaluator:
    """Held-out loss of a global vector over the server's evaluation folder (the client work's folder layout),
    overall and, when the folder has several sub-folders, per sub-folder (slice).

    `parts` is the run's assembly (fedlm.assembly.Assembly). Each slice is scored on at most
    `max_sequences` sequences; the overall loss is the token-weighted mean over the slices, i.e.
    the loss over all their tokens together.
    """
    from fedlm.eval.metrics import EvalResult

    work, adapter = parts.work, parts.adapter
    dataset = work.load_folder(eval_data, test_fraction=0.5, seed=parts.config.run.seed)
    sets = {}
    for client in dataset.clients:  # the canary gate reads losses only: no multiple-choice questions to score
        samples = {client.client_id: list(client.train) + list(client.test)}
        eval_set = work.make_eval_set(parts.base.tokenizer, samples, max_sequences=max_sequences)
        sets[client.client_id] = dataclasses.replace(eval_set, questions=())

    def held_out(vector: np.ndarray) -> Evaluation:
        adapter.write_shared(vector)
        adapter.write_private(adapter.initial_private)
        results = {name: work.evaluate(adapter.model, eval_set) for name, eval_set in sets.items()}
        overall = sum(results.values(), EvalResult())  # summed losses and tokens: the loss over every slice's tokens
        return Evaluation(float(overall.loss), {n: float(r.loss) for n, r in results.items()} if len(results) > 1 else {})

    return held_out
