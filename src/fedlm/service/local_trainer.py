"""The client's model side of `fedlm join`: the run's assembly, its private state, and the encoder.

Built from the coordinator's /v1/config through the one assembly (fedlm.assembly), so the
client attaches the same LoRA layout (same seed), reads and encodes its data with the same
client work (`task.kind`), and runs the same client steps of the update pipeline as the
simulation does. The data is read before the model loads: a bad file fails at once.

When the run compresses (and is not a SecAgg run, whose masked input is built from the
dense vector), `train` returns the encoded wire payload, which is what `fedlm join` uploads:
quantized codes, sparse values, top-k indices (updates.client.make_wire_encoder).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.config import RunConfig, config_from_dict
from fedlm.core.types import Task
from fedlm.data.blocks import Blocks
from fedlm.data.redaction import is_redaction_on, placeholder_counts
from fedlm.privacy.release import releasable_for
from fedlm.updates.client import Encoder, WireEncoder, compression_of, make_encoder, make_wire_encoder

log = logging.getLogger("fedlm.join")


@dataclass
class LocalTrainer:
    run: RunConfig
    client_id: str
    parts: Any  # fedlm.assembly.Assembly
    blocks: Blocks
    encode: Encoder | WireEncoder  # a WireEncoder when the upload is a compressed payload (see `sends_payload`)
    private: np.ndarray  # client-side state: never sent
    residual: np.ndarray | None  # top-k error feedback, client-side state
    sends_payload: bool = False  # the run compresses outside SecAgg: `train` returns the wire payload
    redacted: int | None = None  # placeholders in this client's training samples when redaction is on (a count, never values)

    @classmethod
    def build(cls, config: dict[str, Any], data: Path, *, client_id: str, threads: int = 1, device: str = "",
              encoding: str = "") -> LocalTrainer:
        """The client's trainer; `threads`, `device` and `encoding` (when given) are this machine's and its files',
        and win over the run's."""
        from fedlm.assembly import assemble
        from fedlm.work import make_work

        run = config_from_dict(config["run"])
        model = replace(run.model, threads=threads or run.model.threads, device=device or run.model.device)
        run = replace(run, model=model, data=replace(run.data, encoding=encoding or run.data.encoding))
        work = make_work(run)
        samples = work.read_client(Path(data))
        redacted = sum(placeholder_counts(samples).values()) if is_redaction_on(run.redaction, "folder") else None
        parts = assemble(run, population=int(config["population"]), work=work)
        adapter = parts.adapter
        if adapter.shared_spec.size != config["update_size"]:
            raise RuntimeError(f"this client's adapter has {adapter.shared_spec.size} values, the server's {config['update_size']}")
        encoded = work.encode(parts.base.tokenizer, samples)
        if len(encoded.blocks) == 0:
            raise ValueError(f"the data at {data} yields no training sequence of {run.data.seq_len} tokens "
                             f"({encoded.samples} samples, {encoded.dropped} dropped as longer than data.seq_len)")
        log.info("client %s: %d samples in %d training sequences; %d cut at data.seq_len = %d, %d dropped (data.overlong)",
                 client_id, encoded.samples, len(encoded.blocks), encoded.truncated, run.data.seq_len, encoded.dropped)
        residual = np.zeros(adapter.shared_spec.size, np.float32) if run.compression.sparsify == "top_k" else None
        sends_payload = compression_of(parts.pipeline).kind != "dense" and parts.pipeline.mask is None
        encode = (make_wire_encoder if sends_payload else make_encoder)(parts.pipeline, seed=run.run.seed)
        return cls(run, client_id, parts, encoded.blocks, encode, adapter.initial_private.copy(), residual, sends_payload,
                   redacted)

    def train(self, task: dict[str, Any], global_vector: np.ndarray) -> tuple[np.ndarray | bytes, int, dict[str, float]]:
        """Train on the task; returns the encoded update (float32 after the pipeline's client steps, or the wire
        payload when `sends_payload`), the sample count, metrics."""
        from fedlm.client.train import run_task
        from fedlm.models.lora import client_rank

        lora = self.run.lora
        rank = client_rank(self.client_id, lora.client_ranks, lora.r)
        typed = Task(round=task["round"], version=task["version"], client_id=self.client_id, clip_norm=task["clip_norm"])
        out = np.empty_like(global_vector)
        payloads: list[bytes] = []  # this call's payload, out of the encoder run_task calls

        def encode(vector: np.ndarray, task: Task, residual: np.ndarray | None) -> dict[str, float]:
            metrics, payload = self.encode(vector, task, residual)
            payloads.append(payload)
            return metrics

        update = run_task(
            self.parts.adapter, typed, global_vector=global_vector, private_vector=self.private, train_blocks=self.blocks,
            settings=self.run.client, seed=self.run.run.seed, out=out, rank=rank if rank < lora.r else None,
            encode=encode if self.sends_payload else self.encode, residual=self.residual, loss_fn=self.parts.work.loss,
            rounds=self.run.federation.rounds,
        )
        metrics = {k: float(v) for k, v in update.metrics.items()}
        if self.redacted is not None:
            metrics["redacted"] = float(self.redacted)
        metrics = releasable_for(metrics, self.parts.plan)  # under DP nothing computed from this client's data leaves it
        samples = update.num_samples if self.parts.plan is None else 1  # DP weighs uniformly: the count would only leak
        return (payloads[-1] if self.sends_payload else update.vector), samples, metrics
