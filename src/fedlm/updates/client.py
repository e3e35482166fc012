"""The client side of the pipeline: encode one update in place before it leaves the client.

clip -> [noise share] -> [sparsify] -> [rotate + quantize]. The simulation runs the lossy
channel in place: what the server folds is exactly what it would decode from the wire,
and `bytes_up` is the size of that wire payload (see updates.wire).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fedlm.core.rng import derive_seed, make_rng
from fedlm.core.types import Task
from fedlm.privacy.noise import add_gaussian
from fedlm.updates import wire
from fedlm.updates.clip import clip_in_place
from fedlm.updates.pipeline import Pipeline, Step
from fedlm.updates.quantize import quantize_dequantize_
from fedlm.updates.rotate import padded_size, rotate, unrotate
from fedlm.updates.sparsify import random_mask, top_k

Encoder = Callable[[np.ndarray, Task, "np.ndarray | None"], dict[str, float]]


def mask_seed(seed: int, round: int) -> int:
    """The random mask of a round: shared by its whole cohort, so masked updates sum coordinate-wise."""
    return derive_seed(seed, "sparsify-mask", round)


def select(step: Step | None, vector: np.ndarray, task: Task, seed: int, residual: np.ndarray | None) -> np.ndarray | None:
    """Indices a sparsifier keeps (None: all). top-k adds the residual first (error feedback)."""
    if step is None:
        return None
    fraction = step.param("fraction")
    if step.name == "random_mask":
        return random_mask(vector.size, fraction=fraction, seed=mask_seed(seed, task.round))
    if residual is None:
        raise ValueError("top_k needs the client's error-feedback residual")
    vector += residual  # error feedback: what earlier rounds dropped is sent now
    return top_k(vector, fraction=fraction)


def compress(step: Step, values: np.ndarray, task: Task, seed: int) -> np.ndarray:
    """[rotate ->] stochastic quantization -> dequantize [-> unrotate]: the values the server decodes."""
    bits, chunk = int(step.param("bits")), int(step.param("chunk"))
    rng = make_rng(seed, "quantize", task.round, task.client_id)
    if step.param("rotate"):
        rotation = derive_seed(seed, "rotate", task.round, task.client_id)
        rotated = rotate(values, seed=rotation)
        quantize_dequantize_(rotated, bits=bits, chunk=chunk, rng=rng)
        return unrotate(rotated, seed=rotation, size=values.size)
    out = values.copy()
    quantize_dequantize_(out, bits=bits, chunk=chunk, rng=rng)
    return out


def payload_bytes(size: int, kept: np.ndarray | None, quantizer: Step | None, sparsifier: Step | None) -> int:
    """Bytes of the wire payload: dense, quantized, sparse (indices sent only for top-k)."""
    with_indices = sparsifier is not None and sparsifier.name == "top_k"
    count = size if kept is None else kept.size
    if quantizer is not None:
        bits, chunk = int(quantizer.param("bits")), int(quantizer.param("chunk"))
        transmitted = padded_size(count) if quantizer.param("rotate") else count
        if kept is None:
            return wire.quantized_bytes(transmitted, bits=bits, chunk=chunk)
        return wire.quantized_sparse_bytes(transmitted, bits=bits, chunk=chunk, with_indices=with_indices)
    return wire.dense_bytes(size) if kept is None else wire.sparse_bytes(count, with_indices=with_indices)


def make_encoder(pipeline: Pipeline, *, seed: int) -> Encoder:
    """A function (delta, task, residual) -> metrics that runs the client steps in place.

    Metrics are numbers only: the pre-clip norm, the `unclipped` bit adaptive clipping
    counts, and `bytes_up`, the wire size of the encoded update.
    """
    steps = {s.stage.name: s for s in pipeline.client_steps}
    sparsifier, quantizer = steps.get("SPARSIFY"), steps.get("QUANTIZE")

    def encode(vector: np.ndarray, task: Task, residual: np.ndarray | None = None) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if "CLIP" in steps:
            norm = clip_in_place(vector, task.clip_norm)
            metrics.update(update_norm=norm, unclipped=float(norm <= task.clip_norm))
        if "NOISE_SHARE" in steps:
            # each of the n expected clients adds N(0, (z C)^2 / n): the sum carries N(0, (z C)^2)
            share = steps["NOISE_SHARE"]
            add_gaussian(vector, share.param("noise_multiplier") * task.clip_norm / math.sqrt(share.param("expected_cohort")))
        kept = select(sparsifier, vector, task, seed, residual)
        # top-k: the update plus its fed-back residual, what would ideally be sent
        wanted = vector.copy() if residual is not None else None
        values = vector if kept is None else vector[kept]
        if sparsifier is not None and sparsifier.name == "random_mask":
            values = values * np.float32(vector.size / kept.size)  # unbiased over the mask
        if quantizer is not None:
            values = compress(quantizer, values, task, seed)
        if kept is not None:
            vector[:] = 0
            vector[kept] = values
        elif values is not vector:
            vector[:] = values
        if residual is not None:
            np.subtract(wanted, vector, out=residual)  # error feedback: everything not delivered
        metrics["bytes_up"] = float(payload_bytes(vector.size, kept, quantizer, sparsifier))
        return metrics

    return encode
