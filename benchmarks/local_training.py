"""Local-training throughput inside fedlm versus a bare training loop on the same batches, per kind of client work.

What it measures
    Tokens per second of one client's local training as a simulation runs it:
    `fedlm.client.train.run_task(..., loss_fn=work.loss)` (write the global vector into the
    adapter in place, `train_local` over the client's batches, read the delta back), on the
    adapter `work.attach` gives, for each kind of client work (`fedlm.work.make_work`):

    causal_lm    Shakespeare roles' text packed into blocks of --seq-len tokens.
    instruction  The same kind of roles' dialogue (cue -> reply) under the model's chat
                 template, one conversation a row of --chat-seq-len tokens, labels -100
                 outside the assistant's tokens (a row past it is dropped and counted);
                 each batch is trimmed to its longest labelled row.

    Tokens are labelled tokens (label != -100), counted alike on both sides: for causal_lm
    every non-padding token, for instruction the assistant's tokens only.

The baselines
    A separate PEFT model (`get_peft_model` with the same LoraConfig: r=8, alpha=16,
    q_proj/v_proj, no dropout) on a freshly loaded copy of the same base model, trained by
    a plain loop over its trainable parameters with torch.optim.AdamW; no fedlm code runs
    inside its timed region.
    causal_lm    A bare PEFT loop: for each batch forward with labels, backward, step, zero_grad.
    instruction  A TRL-style SFT loop with completion-only loss, written out below: the
                 padded rows and labels `work.encode` made, each batch cut after its last
                 labelled column, forward with labels, backward, AdamW step, zero_grad.
    The baseline starts from the fedlm adapter's initial values and sees exactly the
    batches run_task draws (same rows, reproduced from the same seeded stream), so both
    sides do identical arithmetic: their per-step losses must agree, which the script checks.

Both sides run in one process on the CPU with torch's default thread count. Each repeat
times the bare loop and fedlm (order alternating per repeat to cancel drift), each after
its own warm-up steps; the report gives each side's median tokens/s, the ratio fedlm / bare
and fedlm's overhead = (1 - ratio) * 100 %, per kind, then one table of both. The target is
an overhead under 5 %.

How to run
    python benchmarks/local_training.py                        # SmolLM2-135M, both kinds, about 5 min on 2 cores
    python benchmarks/local_training.py --task instruction     # one kind: causal_lm or instruction
    python benchmarks/local_training.py --model tiny           # tiny random Llama, seconds
    python benchmarks/local_training.py --json                 # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from fedlm.client.train import run_task
from fedlm.config import TASK_KINDS, ClientSettings, LoraSettings, RunConfig, apply_overrides
from fedlm.core.rng import make_rng
from fedlm.core.types import Task
from fedlm.core.vectors import unflatten
from fedlm.data.blocks import IGNORE, Blocks, batch_order, concat_blocks, pack_texts
from fedlm.data.shakespeare import load_shakespeare
from fedlm.models.base import load_configured_model
from fedlm.work import make_work

from local_training_report import report, summarise  # benchmarks/ is the script's folder

SEED = 0
CLIENTS = 8  # Shakespeare roles whose training samples are concatenated into the one client here
LR = 2e-3
TASK = Task(round=1, version=0, client_id="benchmark/concatenated-roles")
LOSS_TOLERANCE = 1e-5  # first-step losses of the two sides (same init, same batch)

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids, labels: [batch, seq_len]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help='"smollm2" (default), "tiny" for a fast check, or a local model')
    parser.add_argument("--task", choices=("both", *TASK_KINDS), default="both", help="the kind(s) of client work to measure")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per side per repeat")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128, help="causal_lm: tokens per packed block")
    parser.add_argument("--chat-seq-len", type=int, default=256, help="instruction: tokens per conversation row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each timed run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the tables go to stderr)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("seq_len", "chat_seq_len"):
        if not 8 <= getattr(args, name) <= 4096:
            parser.error(f"--{name.replace('_', '-')} must be in [8, 4096]")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def kind_config(args: argparse.Namespace, kind: str) -> RunConfig:
    seq_len = args.seq_len if kind == "causal_lm" else args.chat_seq_len
    return apply_overrides(RunConfig(), {
        "run": {"seed": SEED}, "task": {"kind": kind}, "model": {"name": args.model, "device": "cpu"},
        "data": {"seq_len": seq_len, "overlong": "drop"},
    })


def load_text_blocks(tokenizer, seq_len: int) -> tuple[Blocks, dict]:
    """causal_lm: real Shakespeare clients' training text, a few roles concatenated, packed into blocks."""
    dataset = load_shakespeare(seed=SEED, max_clients=CLIENTS)
    parts = [pack_texts(tokenizer, client.train, seq_len) for client in dataset.clients]
    return concat_blocks(parts, seq_len), {"samples": sum(len(c.train) for c in dataset.clients)}


def load_conversation_rows(work, tokenizer) -> tuple[Blocks, dict]:
    """instruction: a seeded pick of roles from the dialogue federation, their training conversations as rows."""
    federation = work.load_federation()
    picked = sorted(make_rng(SEED, "benchmark-roles").permutation(len(federation.clients))[:CLIENTS])
    encoded = work.encode(tokenizer, [s for i in picked for s in federation.clients[i].train])
    return encoded.blocks, encoded.counts()


# ---------------------------------------------------------------- the bare side


def bare_peft_model(path, lora: LoraSettings, initial: dict[str, np.ndarray]):
    """A fresh base model from the same directory with a plain PEFT LoRA, set to `initial`."""
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
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


def trim_to_labels(input_ids: torch.Tensor, labels: torch.Tensor) -> Batch:
    """Completion-only SFT's batch: the columns up to the last labelled one (the rest is right padding)."""
    labelled = (labels != IGNORE).any(dim=0).nonzero()
    width = int(labelled[-1]) + 1 if len(labelled) else 1
    return input_ids[:, :width], labels[:, :width]


def bare_train(model, params, batches: list[Batch], *, trim: bool) -> tuple[float, list[float]]:
    """The plain loop, timed: seconds and per-step losses. `batches` are prebuilt tensors."""
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    model.train()
    losses = []
    for input_ids, labels in batches:
        if trim:
            input_ids, labels = trim_to_labels(input_ids, labels)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    return seconds, losses


# ---------------------------------------------------------------- the fedlm side


def fedlm_train(adapter, work, blocks, settings, global_vector, out) -> tuple[float, list[float], int]:
    """One client turn as the simulation engine runs it, timed: seconds, per-step losses, tokens."""
    private = adapter.initial_private.copy()  # a client's first turn
    losses: list[float] = []
    start = time.perf_counter()
    update = run_task(
        adapter, TASK, global_vector=global_vector, private_vector=private, train_blocks=blocks,
        settings=settings, seed=SEED, out=out, on_step=lambda _step, loss: losses.append(loss), loss_fn=work.loss,
    )
    seconds = time.perf_counter() - start
    return seconds, losses, int(update.metrics["tokens"])


# ---------------------------------------------------------------- the run


def check_batches(model: torch.nn.Module, warm_fedlm: Callable[[], object], batches: list[Batch], *, trim: bool) -> int:
    """Run fedlm's warm-up while capturing its model's input_ids; each must equal the bare loop's batch."""
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    warm_fedlm()
    hook.remove()
    for step, ids in enumerate(seen):
        expected = trim_to_labels(*batches[step])[0] if trim else batches[step][0]
        if not torch.equal(ids, expected):
            raise RuntimeError(f"fedlm's batch {step} differs from the bare loop's: the batch order is not reproduced")
    return len(seen)


def time_repeats(args, kind: str, bare: Callable[[bool], tuple], fedlm: Callable[[bool], tuple], tokens: int) -> list[dict]:
    """Each repeat: both sides (alternating which goes first), each after its warm-up; tokens/s per side."""
    rows = []
    for repeat in range(args.repeats):
        sides = ("bare", "fedlm") if repeat % 2 == 0 else ("fedlm", "bare")
        row = {"repeat": repeat + 1, "order": "/".join(sides)}
        for side in sides:
            if args.warmup:
                (bare if side == "bare" else fedlm)(True)
            seconds, losses, counted = bare(False) if side == "bare" else fedlm(False)
            if counted != tokens:
                raise RuntimeError(f"{side} counted {counted} tokens, the batches hold {tokens} labelled ones")
            row[side] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "losses": losses}
        row["ratio"] = row["fedlm"]["tokens_per_s"] / row["bare"]["tokens_per_s"]
        rows.append(row)
        log(f"{kind} repeat {repeat + 1}/{args.repeats} ({row['order']}): bare {row['bare']['tokens_per_s']:.1f} tok/s, "
            f"fedlm {row['fedlm']['tokens_per_s']:.1f} tok/s, ratio {row['ratio']:.4f}")
    return rows


def measure(args: argparse.Namespace, kind: str) -> dict:
    """Both sides of one kind of client work, from loading the model to the summary."""
    config = kind_config(args, kind)
    work = make_work(config)
    log(f"{kind}: loading {args.model} twice (fedlm adapter, bare PEFT model) and the Shakespeare data ...")
    base = load_configured_model(config.model)
    adapter = work.attach(base)
    if kind == "causal_lm":
        blocks, data = load_text_blocks(base.tokenizer, config.data.seq_len)
    else:
        blocks, data = load_conversation_rows(work, base.tokenizer)
    order = batch_order(  # the rows run_task draws for TASK (see fedlm.client.train.run_task)
        len(blocks), steps=args.steps, batch_size=args.batch_size,
        rng=make_rng(SEED, "batches", TASK.round, TASK.client_id),
    )
    batches = [(blocks.input_ids[torch.as_tensor(row)], blocks.labels[torch.as_tensor(row)]) for row in order]
    tokens = sum(int((labels != IGNORE).sum()) for _, labels in batches)
    initial = {**unflatten(adapter.shared_spec, adapter.initial_shared), **unflatten(adapter.private_spec, adapter.initial_private)}
    bare_model, bare_params, bare_init = bare_peft_model(base.path, config.lora, initial)
    global_vector = adapter.initial_shared.copy()
    out = np.empty_like(global_vector)
    trim = kind == "instruction"
    settings = ClientSettings(local_steps=args.steps, batch_size=args.batch_size, lr=LR)
    warm_settings = ClientSettings(local_steps=max(args.warmup, 1), batch_size=args.batch_size, lr=LR)

    def bare(warm: bool) -> tuple[float, list[float], int]:
        reset(bare_params, bare_init)
        seconds, losses = bare_train(bare_model, bare_params, batches[: args.warmup] if warm else batches, trim=trim)
        return seconds, losses, tokens

    def fedlm(warm: bool) -> tuple[float, list[float], int]:
        return fedlm_train(adapter, work, blocks, warm_settings if warm else settings, global_vector, out)

    checked = check_batches(adapter.model, lambda: fedlm(True), batches, trim=trim)
    log(f"{kind} batches: fedlm's first {checked} batch(es) equal the bare loop's")
    rows = time_repeats(args, kind, bare, fedlm, tokens)
    return summarise(rows, task=kind, seq_len=config.data.seq_len, clients=CLIENTS, blocks=len(blocks), data=data,
                     tokens=tokens, tolerance=LOSS_TOLERANCE)


def run(args: argparse.Namespace) -> dict:
    kinds = TASK_KINDS if args.task == "both" else (args.task,)
    results = []
    for kind in kinds:
        results.append(measure(args, kind))
        gc.collect()  # the kind's two models go before the next kind loads its own
    return {
        "benchmark": "local_training",
        "model": args.model,
        "torch_threads": torch.get_num_threads(),  # torch's default, left unchanged
        "torch": torch.__version__,
        "python": platform.python_version(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "losses_match": all(r["losses_match"] for r in results),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        log(report(result))
        print(json.dumps(result))
    else:
        print(report(result))
    return 0 if result["losses_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
