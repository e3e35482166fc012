"""A check of fedlm's local training on a CUDA GPU: instruction work through run_task in float32, bfloat16 and 4-bit NF4.

Meant for a machine with a CUDA GPU (model.device = "cuda"). For each configuration of the
base model (float32; bfloat16; 4-bit NF4 with double quantization and bfloat16 compute, the
QLoRA recipe of Dettmers et al. 2023, arXiv:2305.14314) it loads the model on the device,
attaches the LoRA adapter (`work.attach`), runs --steps local-training steps of instruction
work (Shakespeare dialogue, loss on the assistant's tokens) through
`fedlm.client.train.run_task` after one untimed warm-up step, and prints:

- tokens/s: labelled (assistant) tokens trained per second, the device synchronised;
- peak GPU memory: torch.cuda.max_memory_allocated from the model load to the last step;
- the first and last step's loss (both must be finite);
- whether Adapter.write_shared then read_shared give back a seeded random vector bit for
  bit, with the adapter's parameters on the device (they must be, and float32).

The 4-bit row needs bitsandbytes; without it the row is skipped with the reason. On a
machine without CUDA the script prints one line saying so and exits 0 (1 with --require-gpu),
before importing fedlm or loading anything.

How to run
    benchmarks/gpu_check.sh                              # the venv's python, SmolLM2-135M, 8 steps each
    benchmarks/gpu_check.sh --model tiny --steps 4       # the tiny random Llama, seconds
    benchmarks/gpu_check.sh --json                       # one JSON object on stdout
Exit status 0 when every row that ran trained with finite losses and round-tripped exactly,
1 otherwise; with --require-gpu also 1 on a machine without CUDA or when a row was skipped.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import sys
import time
import traceback

import numpy as np
import torch

SEED = 0
CLIENTS = 8  # Shakespeare roles whose training conversations make the one client here
LR = 2e-3
MIB = 2**20
# (row name, [model] settings)
CONFIGURATIONS = (
    ("float32", {"dtype": "float32"}),
    ("bfloat16", {"dtype": "bfloat16"}),
    ("nf4-bf16", {"dtype": "bfloat16", "load_in_4bit": True}),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help='"smollm2" (default), "tiny", or a local model')
    parser.add_argument("--device", default="cuda", help='"cuda" or "cuda:N"')
    parser.add_argument("--steps", type=int, default=8, help="timed local-training steps per configuration")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per conversation row (longer ones are dropped)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="exit 1 (not 0) on a machine without CUDA, or when any row was skipped (4-bit without bitsandbytes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.device.startswith("cuda"):
        parser.error("--device must be 'cuda' or 'cuda:N': this check is for a CUDA GPU")
    return args


def load_conversations(seed: int):
    """A seeded pick of roles from the dialogue federation: their training conversations, model-independent."""
    from fedlm.config import RunConfig, apply_overrides
    from fedlm.core.rng import make_rng
    from fedlm.work import make_work

    federation = make_work(apply_overrides(RunConfig(), {"task": {"kind": "instruction"}})).load_federation()
    picked = sorted(make_rng(seed, "benchmark-roles").permutation(len(federation.clients))[:CLIENTS])
    return [s for i in picked for s in federation.clients[i].train]


def round_trip(adapter, device: torch.device) -> dict:
    """write_shared then read_shared of a seeded random vector: bit for bit, with the parameters on `device`."""
    from fedlm.core.rng import make_rng

    vector = make_rng(SEED, "round-trip").standard_normal(adapter.shared_spec.size, dtype=np.float32)
    adapter.write_shared(vector)
    back = adapter.read_shared(np.empty_like(vector))
    params = adapter.shared_params
    on_device = all(p.device.type == device.type for p in params)
    float32 = all(p.dtype == torch.float32 for p in params)
    return {"exact": bool(np.array_equal(vector, back)), "on_device": on_device, "float32": float32,
            "max_abs_diff": float(np.max(np.abs(vector - back))) if len(vector) else 0.0}


def check_configuration(args: argparse.Namespace, settings: dict, conversations: list) -> dict:
    """Load, attach, warm up, train --steps through run_task, round-trip: one row's figures."""
    from fedlm.client.train import run_task
    from fedlm.config import ClientSettings, RunConfig, apply_overrides
    from fedlm.core.types import Task
    from fedlm.models.base import load_configured_model
    from fedlm.work import make_work

    config = apply_overrides(RunConfig(), {
        "run": {"seed": SEED}, "task": {"kind": "instruction"},
        "model": {"name": args.model, "device": args.device, **settings},
        "data": {"seq_len": args.seq_len, "overlong": "drop"},
    })
    device = torch.device(args.device)
    torch.cuda.reset_peak_memory_stats(device)
    work = make_work(config)
    base = load_configured_model(config.model)
    adapter = work.attach(base)
    encoded = work.encode(base.tokenizer, conversations)
    task = Task(round=1, version=0, client_id="gpu-check/concatenated-roles")
    out = np.empty_like(adapter.initial_shared)

    def train(steps: int, losses: list[float]) -> int:
        update = run_task(
            adapter, task, global_vector=adapter.initial_shared, private_vector=adapter.initial_private.copy(),
            train_blocks=encoded.blocks, settings=ClientSettings(local_steps=steps, batch_size=args.batch_size, lr=LR),
            seed=SEED, out=out, on_step=lambda _step, loss: losses.append(loss), loss_fn=work.loss,
        )
        return int(update.metrics["tokens"])

    train(1, [])  # warm-up: CUDA context, kernels, allocator
    losses: list[float] = []
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    tokens = train(args.steps, losses)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    trip = round_trip(adapter, device)
    finite = all(math.isfinite(x) for x in losses)
    return {
        "status": "ok" if finite and trip["exact"] and trip["on_device"] and trip["float32"] else "failed",
        "rows": len(encoded.blocks), "dropped": encoded.dropped, "tokens": tokens, "seconds": seconds,
        "tokens_per_s": tokens / seconds, "peak_mib": torch.cuda.max_memory_allocated(device) / MIB,
        "first_loss": losses[0], "last_loss": losses[-1], "finite": finite, "round_trip": trip,
    }


def skip_reason(settings: dict) -> str | None:
    if settings.get("load_in_4bit") and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'fedlm[gpu]')"
    return None


def run_checks(args: argparse.Namespace) -> dict:
    from fedlm.models.device import DeviceError

    conversations = load_conversations(SEED)
    rows = {}
    for name, settings in CONFIGURATIONS:
        reason = skip_reason(settings)
        if reason is None:
            try:
                rows[name] = check_configuration(args, settings, conversations)
            except DeviceError as err:  # the configuration cannot run here: say why, check the others
                rows[name] = {"status": "skipped", "reason": str(err)}
            except Exception as err:  # one broken row must not hide the others' figures
                traceback.print_exc(file=sys.stderr)
                rows[name] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
        else:
            rows[name] = {"status": "skipped", "reason": reason}
        gc.collect()  # the row's model goes before the next one loads
        torch.cuda.empty_cache()
        print(f"{name}: {rows[name]['status']}", file=sys.stderr, flush=True)
    return {
        "benchmark": "gpu_check", "model": args.model, "device": torch.cuda.get_device_name(torch.device(args.device)),
        "torch": torch.__version__, "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "ok": all(r["status"] != "failed" for r in rows.values()), "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        f"gpu_check: {result['model']} on {result['device']} (torch {result['torch']}), instruction work, "
        f"{result['steps']} steps x batch {result['batch_size']}, rows <= {result['seq_len']} tokens",
        f"{'config':<10}  {'tokens/s':>9}  {'peak MiB':>9}  {'first loss':>10}  {'last loss':>9}  round trip",
    ]
    for name, r in result["rows"].items():
        if "tokens_per_s" not in r:
            lines.append(f"{name:<10}  {r['status']}: {r['reason']}")
            continue
        trip = r["round_trip"]
        where = "on device" if trip["on_device"] else "NOT ON DEVICE"
        exact = "exact" if trip["exact"] else f"INEXACT (max diff {trip['max_abs_diff']:.2e})"
        lines.append(
            f"{name:<10}  {r['tokens_per_s']:>9.1f}  {r['peak_mib']:>9.1f}  {r['first_loss']:>10.4f}  {r['last_loss']:>9.4f}  "
            f"{exact}, {where}, {'float32' if trip['float32'] else 'NOT float32'}"
            + ("" if r["finite"] else "  NON-FINITE LOSS")
        )
    lines.append("all rows that ran: ok" if result["ok"] else "FAILED: see the rows above")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__} sees none); this check is for a GPU machine, "
              "nothing was run", flush=True)
        return 1 if args.require_gpu else 0
    result = run_checks(args)
    if args.json:
        print(table(result), file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table(result))
    skipped = [name for name, r in result["rows"].items() if r["status"] == "skipped"]
    if args.require_gpu and skipped:
        print(f"gpu_check: --require-gpu, but {', '.join(skipped)} did not run", file=sys.stderr)
        return 1
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
