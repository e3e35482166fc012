"""One simulation run end to end, with its run directory: the function behind `fedlm simulate`.

If a round fails or the run is interrupted, the last committed global adapter is still
exported and summary.json says how the run ended.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedlm.config import RunConfig
from fedlm.models.lora import export_adapter
from fedlm.server.rounds import ServerState, initial_state
from fedlm.sim.engine import RunResult, simulate
from fedlm.sim.events import Reporter
from fedlm.sim.rundir import ADAPTER_DIR, append_metrics, check_run_dir, make_run_dir, write_config, write_summary
from fedlm.sim.setup import Simulation, prepare


def build_summary(sim: Simulation, result: RunResult | None, state: ServerState, status: str, seconds: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": status,
        "model": sim.config.model.name,
        "base_model_dir": str(sim.base.path),
        "dataset": sim.dataset.name,
        "population": len(sim.population),
        "eval_clients": len(sim.eval_clients),
        "seed": sim.config.run.seed,
        "rounds_done": state.rounds_done,
        "version": state.version,
        "update_size": int(state.global_vector.size),
        "update_bytes": int(state.global_vector.nbytes),
        "seconds": round(seconds, 2),
        "adapter_dir": ADAPTER_DIR,
        "pipeline": sim.pipeline.describe(),
    }
    if result is not None:
        summary["base"] = result.base_eval.as_dict()
        summary["final"] = result.final_eval.as_dict()
    return summary


def run_simulation(config: RunConfig, out: Path, *, overwrite: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Prepare, simulate every round, export the adapter and write summary.json; returns the summary."""
    check_run_dir(out, overwrite=overwrite)
    started = time.perf_counter()
    sim = prepare(config)
    out = make_run_dir(out, overwrite=overwrite)
    write_config(out, config)
    last = {"state": initial_state(sim.adapter.initial_shared, sim.pipeline), "eval": None}

    def on_record(record: dict[str, Any], state: ServerState) -> None:
        append_metrics(out, record)
        last["state"], last["eval"] = state, record

    result, status = None, "failed"
    try:
        result = simulate(sim, reporter, on_record=on_record)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        state = result.state if result is not None else last["state"]
        export_adapter(sim.adapter, state.global_vector, out / ADAPTER_DIR)
        summary = build_summary(sim, result, state, status, time.perf_counter() - started)
        if result is None and last["eval"] is not None:
            summary["final"] = last["eval"]["eval"]
        write_summary(out, summary)
    return summary


