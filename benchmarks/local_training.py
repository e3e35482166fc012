"""Local-training throughput inside fedlm versus a bare PEFT training loop on the same batches.

What it measures
    Tokens per second of one client's local training as a simulation runs it:
    `fedlm.client.train.run_task` (write the global vector into the adapter in place,
    `train_local` over the client's batches, read the delta back), on an adapter from
    `fedlm.models.lora.attach_lora`. Tokens are non-padding label tokens.

The baseline
    A separate PEFT model (`get_peft_model` with the same LoraConfig: r=8, alpha=16,
    q_proj/v_proj, no dropout) on a freshly loaded copy of the same base model, trained by
    a plain loop: torch.optim.AdamW over its trainable parameters, then for each batch
    forward with labels, backward, step, zero_grad. No fedlm code runs inside its timed
    region. It starts from the fedlm adapter's initial values and sees exactly the batches
    run_task draws (same block indices, reproduced from the same seeded stream), so both
    sides do identical arithmetic: their per-step losses must agree, which the script
    checks and prints.

Both sides run in one process with torch's default thread count. Each repeat times the
bare loop and fedlm (order alternating per repeat to cancel drift), each after its own
warm-up steps; the report gives each side's median tokens/s, the ratio fedlm / bare and
fedlm's overhead = (1 - ratio) * 100 %. The target is an overhead under 5 %.

How to run
    python benchmarks/local_training.py                # SmolLM2-135M, about 3-4 min on 2 cores
    python benchmarks/local_training.py --model tiny   # tiny random Llama, a few seconds
    python benchmarks/local_training.py --json         # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from fedlm.client.train import run_task
from fedlm.config import ClientSettings, LoraSettings
from fedlm.core.rng import make_rng
from fedlm.core.types import Task
from fedlm.core.vectors import unflatten
from fedlm.data.blocks import IGNORE, Blocks, batch_order, concat_blocks, pack_texts
from fedlm.data.shakespeare import load_shakespeare
from fedlm.models.base import load_base_model
from fedlm.models.lora import attach_lora

SEED = 0
CLIENTS = 8  # Shakespeare roles whose training text is concatenated into the one client here
LR = 2e-3
TASK = Task(round=1, version=0, client_id="benchmark/concatenated-roles")
LOSS_TOLERANCE = 1e-5  # first-step losses of the two sides (same init, same batch)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help='"smollm2" (default), "tiny" for a fast check, or a local model')
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per side per repeat")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each timed run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def load_blocks(tokenizer, seq_len: int) -> Blocks:
    """Real Shakespeare clients' training text, a few roles concatenated, packed into blocks."""
    dataset = load_shakespeare(seed=SEED, max_clients=CLIENTS)
    parts = [pack_texts(tokenizer, client.train, seq_len) for client in dataset.clients]
    return concat_blocks(parts, seq_len)


# ---------------------------------------------------------------- the bare PEFT side


def bare_peft_model(path, lora: LoraSettings, initial: dict[str, np.ndarray]):
    """A fresh base model from the same directory with a plain PEFT LoRA, set to `initial`."""
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if sorted(names) != sorted(initial):
        raise RuntimeError("the bare PEFT model's trainable parameters differ from fedlm's adapter")
    init = [torch.from_numpy(initial[n].copy()) for n in names]
    return model, params, init


def reset(params: list[torch.Tensor], init: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, value in zip(params, init, strict=True):
            p.copy_(value)


def bare_train(model, params, batches) -> tuple[float, list[float]]:
    """The plain loop, timed: seconds and per-step losses. `batches` are prebuilt tensors."""
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    model.train()
    losses = []
    for input_ids, labels in batches:
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    return seconds, losses


# ---------------------------------------------------------------- the fedlm side


def fedlm_train(adapter, blocks, settings, global_vector, out) -> tuple[float, list[float], int]:
    """One client turn as the simulation engine runs it, timed: seconds, per-step losses, tokens."""
    private = adapter.initial_private.copy()  # a client's first turn
    losses: list[float] = []
    start = time.perf_counter()
    update = run_task(
        adapter, TASK, global_vector=global_vector, private_vector=private,
        train_blocks=blocks, settings=settings, seed=SEED, out=out, on_step=lambda _step, loss: losses.append(loss),
    )
    seconds = time.perf_counter() - start
    return seconds, losses, int(update.metrics["tokens"])


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict:
    threads = torch.get_num_threads()  # torch's default, left unchanged
    lora = LoraSettings()
    settings = ClientSettings(local_steps=args.steps, batch_size=args.batch_size, lr=LR)
    warm_settings = ClientSettings(local_steps=max(args.warmup, 1), batch_size=args.batch_size, lr=LR)

    log(f"loading {args.model} twice (fedlm adapter, bare PEFT model) and the Shakespeare text ...")
    base = load_base_model(args.model)
    adapter = attach_lora(base, lora, seed=SEED)
    blocks = load_blocks(base.tokenizer, args.seq_len)

    # The block indices run_task draws for TASK (see fedlm.client.train.run_task).
    order = batch_order(
        len(blocks), steps=args.steps, batch_size=args.batch_size,
        rng=make_rng(SEED, "batches", TASK.round, TASK.client_id),
    )
    batches = [(blocks.input_ids[torch.as_tensor(row)], blocks.labels[torch.as_tensor(row)]) for row in order]
    tokens = sum(int((labels != IGNORE).sum()) for _, labels in batches)
    warm_batches = batches[: args.warmup]

    initial = {**unflatten(adapter.shared_spec, adapter.initial_shared), **unflatten(adapter.private_spec, adapter.initial_private)}
    bare_model, bare_params, bare_init = bare_peft_model(base.path, lora, initial)
    global_vector = adapter.initial_shared.copy()
    out = np.empty_like(global_vector)

    # Batch check: capture the input_ids fedlm's model sees during its first warm-up.
    seen: list[torch.Tensor] = []
    hook = adapter.model.register_forward_pre_hook(
        lambda _m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True
    )
    fedlm_train(adapter, blocks, warm_settings, global_vector, out)
    hook.remove()
    for step, ids in enumerate(seen):
        if not torch.equal(ids, batches[step][0]):
            raise RuntimeError(f"fedlm's batch {step} differs from the bare loop's: the batch order is not reproduced")
    log(f"batches: fedlm's first {len(seen)} batch(es) equal the bare loop's")

    rows = []
    for repeat in range(args.repeats):
        sides = ("bare", "fedlm") if repeat % 2 == 0 else ("fedlm", "bare")
        row = {"repeat": repeat + 1, "order": "/".join(sides)}
        for side in sides:
            if side == "bare":
                if warm_batches:
                    reset(bare_params, bare_init)
                    bare_train(bare_model, bare_params, warm_batches)
                reset(bare_params, bare_init)
                seconds, losses = bare_train(bare_model, bare_params, batches)
                row["bare"] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "losses": losses}
            else:
                if args.warmup:
                    fedlm_train(adapter, blocks, warm_settings, global_vector, out)
                seconds, losses, fedlm_tokens = fedlm_train(adapter, blocks, settings, global_vector, out)
                if fedlm_tokens != tokens:
                    raise RuntimeError(f"fedlm counted {fedlm_tokens} tokens, the bare loop {tokens}")
                row["fedlm"] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "losses": losses}
        row["ratio"] = row["fedlm"]["tokens_per_s"] / row["bare"]["tokens_per_s"]
        rows.append(row)
        log(
            f"repeat {repeat + 1}/{args.repeats} ({row['order']}): bare {row['bare']['tokens_per_s']:.1f} tok/s, "
            f"fedlm {row['fedlm']['tokens_per_s']:.1f} tok/s, ratio {row['ratio']:.4f}"
        )

    first_diff = max(abs(r["fedlm"]["losses"][0] - r["bare"]["losses"][0]) for r in rows)
    max_diff = max(abs(f - b) for r in rows for f, b in zip(r["fedlm"]["losses"], r["bare"]["losses"], strict=True))
    bare_median = statistics.median(r["bare"]["tokens_per_s"] for r in rows)
    fedlm_median = statistics.median(r["fedlm"]["tokens_per_s"] for r in rows)
    ratio = fedlm_median / bare_median
    return {
        "benchmark": "local_training",
        "model": args.model,
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "clients": CLIENTS,
        "blocks": len(blocks),
        "tokens_per_run": tokens,
        "bare_tokens_per_s": bare_median,
        "fedlm_tokens_per_s": fedlm_median,
        "ratio": ratio,
        "overhead_pct": (1 - ratio) * 100,
        "paired_ratio_median": statistics.median(r["ratio"] for r in rows),
        "first_step_loss_max_abs_diff": first_diff,
        "loss_max_abs_diff": max_diff,
        "losses_match": first_diff <= LOSS_TOLERANCE,
        "first_step_loss": rows[0]["bare"]["losses"][0],
        "repeats_detail": [
            {
                "repeat": r["repeat"],
                "order": r["order"],
                "bare_seconds": r["bare"]["seconds"],
                "fedlm_seconds": r["fedlm"]["seconds"],
                "bare_tokens_per_s": r["bare"]["tokens_per_s"],
                "fedlm_tokens_per_s": r["fedlm"]["tokens_per_s"],
                "ratio": r["ratio"],
            }
            for r in rows
        ],
    }


def table(result: dict) -> str:
    lines = [
        f"model {result['model']}, torch threads {result['torch_threads']}, torch {result['torch']}",
        f"{result['steps']} steps x batch {result['batch_size']} x {result['seq_len']} tokens "
        f"({result['tokens_per_run']} label tokens per run, {result['blocks']} blocks from {result['clients']} Shakespeare roles), "
        f"{result['repeats']} repeats, {result['warmup']} warm-up steps",
        "",
        f"{'repeat':>6}  {'order':<10}  {'bare tok/s':>10}  {'fedlm tok/s':>11}  {'ratio':>7}",
    ]
    for r in result["repeats_detail"]:
        lines.append(
            f"{r['repeat']:>6}  {r['order']:<10}  {r['bare_tokens_per_s']:>10.1f}  {r['fedlm_tokens_per_s']:>11.1f}  {r['ratio']:>7.4f}"
        )
    lines += [
        f"{'median':>6}  {'':<10}  {result['bare_tokens_per_s']:>10.1f}  {result['fedlm_tokens_per_s']:>11.1f}  {result['ratio']:>7.4f}",
        "",
        f"fedlm / bare = {result['ratio']:.4f}, overhead {result['overhead_pct']:+.2f} % (target < 5 %); "
        f"median of per-repeat ratios {result['paired_ratio_median']:.4f}",
        f"loss check: max |fedlm - bare| first step {result['first_step_loss_max_abs_diff']:.2e}, "
        f"any step {result['loss_max_abs_diff']:.2e} ({'ok' if result['losses_match'] else 'MISMATCH'})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        log(table(result))
        print(json.dumps(result))
    else:
        print(table(result))
    return 0 if result["losses_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
