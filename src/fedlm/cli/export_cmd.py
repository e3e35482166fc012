"""`fedlm export RUN_DIR OUT_DIR [--merged]`: hand a run's adapter on, with its model card, or merged into its base.

The adapter export copies the run's PEFT files, names the base model a reader can load
(fedlm.models.card.base_origin) and writes the model card; it needs no torch. --merged
loads the base model, merges the adapter into its weights (PEFT merge_and_unload) and
saves a plain transformers model with its tokenizer. OUT_DIR is written whole or not at
all (fedlm.models.output_dir). torch, transformers and PEFT load inside the command only.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.console import Console

from fedlm.sim.rundir import ADAPTER_DIR, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics

console = Console()
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_command(
    run_dir: Path = typer.Argument(..., help="A run directory that `fedlm simulate` wrote."),
    out_dir: Path = typer.Argument(..., help="Where to write the export (created; must not hold files unless --overwrite)."),
    merged: bool = typer.Option(False, "--merged", help="Write the base model with the adapter merged in: it loads "
                                "with transformers' AutoModelForCausalLM alone."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it exists and is not empty."),
) -> None:
    """Write a run's adapter (PEFT format, with a model card) to OUT_DIR, or with --merged the merged model."""
    from fedlm.models.output_dir import check_output_dir

    try:
        check_paths(run_dir, out_dir)
        check_output_dir(out_dir, overwrite=overwrite)
        facts, adapter_config = read_run(run_dir)
        if merged:
            export_merged(run_dir, out_dir, facts, overwrite=overwrite)
        else:
            export_adapter_files(run_dir, out_dir, facts, adapter_config, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(str(out_dir))


def check_paths(run_dir: Path, out_dir: Path) -> None:
    """RUN_DIR holds a run with an adapter, and OUT_DIR is neither it, its adapter, nor a folder above them."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} is not a run directory: it holds no {CONFIG_FILE}")
    missing = [name for name in ADAPTER_FILES if not (run_dir / ADAPTER_DIR / name).is_file()]
    if missing:
        raise ValueError(f"{run_dir / ADAPTER_DIR} lacks {', '.join(missing)}: the run exported no adapter")
    out, run = out_dir.resolve(), run_dir.resolve()
    if out == run or out in run.parents or out == run / ADAPTER_DIR:
        raise ValueError(f"OUT_DIR {out_dir} would replace the run itself; choose a directory outside {run_dir}")


def read_run(run_dir: Path):
    """The run's facts for the model card (config.toml, summary.json, metrics.jsonl) and its adapter_config.json."""
    from fedlm.models.card import RunFacts

    try:
        config = tomllib.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if (run_dir / SUMMARY_FILE).is_file() else {}
        records = read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else []
        adapter_config = json.loads((run_dir / ADAPTER_DIR / "adapter_config.json").read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{run_dir} holds a damaged run file: {err}") from None
    return RunFacts(config=config, summary=summary, records=records), adapter_config


def model_name(facts) -> str:
    name = facts.config.get("model", {}).get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"the run's {CONFIG_FILE} names no model.name")
    return name


def export_adapter_files(run_dir: Path, out_dir: Path, facts, adapter_config: dict[str, Any], *, overwrite: bool) -> None:
    """Copy the run's adapter, naming the loadable base model, and write its model card beside it."""
    from fedlm.models.card import base_origin, model_card
    from fedlm.models.output_dir import write_output_dir

    loaded_from = facts.summary.get("base_model_dir") or adapter_config.get("base_model_name_or_path") or ""
    origin = base_origin(model_name(facts), loaded_from)
    config = {**adapter_config, "base_model_name_or_path": origin.name_or_path}
    card = model_card(facts, origin, tool_version=fedlm_version())

    def build(tmp: Path) -> None:
        shutil.copyfile(run_dir / ADAPTER_DIR / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(card, encoding="utf-8")

    write_output_dir(out_dir, build, overwrite=overwrite)


def export_merged(run_dir: Path, out_dir: Path, facts, *, overwrite: bool) -> None:
    """Load the base model, merge the run's adapter into it and save the merged model with its tokenizer."""
    from peft import PeftModel

    from fedlm.models.base import load_base_model
    from fedlm.models.card import base_origin, model_card
    from fedlm.models.lora import save_merged

    name, dtype = model_name(facts), facts.config.get("model", {}).get("dtype", "float32")
    started = time.perf_counter()
    console.print(f"loading the base model {name!r} ({dtype}) ...")
    base = load_base_model(name, device="cpu", dtype=dtype)  # unquantized even after a QLoRA run: merged weights are dense
    model = PeftModel.from_pretrained(base.model, run_dir / ADAPTER_DIR)
    size = sum(p.numel() * p.element_size() for p in base.model.parameters())
    console.print(f"merging the adapter and saving the full model ({size / 1e6:,.1f} MB) to {out_dir} ...")
    card = model_card(facts, base_origin(name, base.path), merged=True, tool_version=fedlm_version())
    save_merged(model, base.tokenizer, out_dir, card=card, overwrite=overwrite)
    console.print(f"merged model written in {time.perf_counter() - started:.0f} s")


def fedlm_version() -> str:
    try:
        return metadata.version("fedlm")
    except metadata.PackageNotFoundError:
        return ""
