"""The client's model side of `fedlm join`: the run's adapter, its private state, and the encoder.

Built from the coordinator's /v1/config, so the client attaches the same LoRA layout (same
seed) and runs the same client steps of the update pipeline as the simulation does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedlm.config import RunConfig, config_from_dict
from fedlm.core.types import Task
from fedlm.data.blocks import Blocks, pack_texts
from fedlm.models.lora import Adapter, attach_lora, client_rank
from fedlm.updates.client import Encoder, make_encoder


@dataclass
class LocalTrainer:
    run: RunConfig
    client_id: str
    adapter: Adapter
    blocks: Blocks
    encode: Encoder
    private: np.ndarray  # client-side state: never sent
    residual: np.ndarray | None  # top-k error feedback, client-side state

    @classmethod
    def build(cls, config: dict[str, Any], texts: list[str], *, client_id: str, threads: int = 1) -> LocalTrainer:
        from fedlm.models.base import load_base_model
        from fedlm.privacy.plan import make_privacy_plan
        from fedlm.updates.build import build_pipeline

        if threads:
            torch.set_num_threads(threads)
        run = config_from_dict(config["run"])
        base = load_base_model(run.model.name)
        adapter = attach_lora(base, run.lora, seed=run.run.seed)
        if adapter.shared_spec.size != config["update_size"]:
            raise RuntimeError(f"this client's adapter has {adapter.shared_spec.size} values, the server's {config['update_size']}")
        plan = make_privacy_plan(run.privacy, run.federation, int(config["population"]))
        pipeline = build_pipeline(run.strategy, run.lora, adapter.shared_spec, plan, run.compression, run.secagg)
        blocks = pack_texts(base.tokenizer, texts, run.data.seq_len)
        if len(blocks) == 0:
            raise ValueError(f"the data folder yields no training sequence of {run.data.seq_len} tokens")
        residual = np.zeros(adapter.shared_spec.size, np.float32) if run.compression.sparsify == "top_k" else None
        encode = make_encoder(pipeline, seed=run.run.seed)
        return cls(run, client_id, adapter, blocks, encode, adapter.initial_private.copy(), residual)

    def train(self, task: dict[str, Any], global_vector: np.ndarray) -> tuple[np.ndarray, int, dict[str, float]]:
        """Train on the task; returns the encoded update (float32, after the pipeline's client steps), the sample count, metrics."""
        from fedlm.client.train import run_task

        lora = self.run.lora
        rank = client_rank(self.client_id, lora.client_ranks, lora.r)
        typed = Task(round=task["round"], version=task["version"], client_id=self.client_id, clip_norm=task["clip_norm"])
        out = np.empty_like(global_vector)
        update = run_task(
            self.adapter, typed, global_vector=global_vector, private_vector=self.private, train_blocks=self.blocks,
            settings=self.run.client, seed=self.run.run.seed, out=out, rank=rank if rank < lora.r else None,
            encode=self.encode, residual=self.residual,
        )
        metrics = {k: float(v) for k, v in update.metrics.items()}
        return update.vector, update.num_samples, metrics
