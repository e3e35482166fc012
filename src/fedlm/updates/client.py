"""The client side of the pipeline: encode one update in place before it leaves the client,
and the server's exact inverse, which turns the wire payload back into the dense vector.

clip -> [noise share] -> [sparsify] -> [rotate + quantize]. The quantizer scales each chunk
by the client's own max |x| (updates.quantize), or, under DP or SecAgg, rounds onto the
cohort's shared grid without leaving the clip norm (updates.dp_quantize); that grid comes
from the round's clip norm, so the server checks a payload's scale against its own.

The simulation runs the lossy channel in place: what the server folds is exactly what it
would decode from the wire, and `bytes_up` is the size of that wire payload (see
updates.wire). `fedlm join` takes the payload itself (`make_wire_encoder`): quantized codes
and scales, sparse values, top-k indices (a random mask's indices and the rotation's signs
are redrawn by the server from the run seed, the round and the client id, so they are not
sent), and the coordinator decodes it with `decode_payload`, bit for bit into the vector
the simulation folds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedlm.core.rng import derive_seed, make_rng
from fedlm.core.types import Task
from fedlm.privacy.noise import add_gaussian
from fedlm.updates import wire
from fedlm.updates.clip import clip_in_place
from fedlm.updates.dp_quantize import SharedGrid, is_on_grid, quantize_shared
from fedlm.updates.pipeline import SHARED_QUANTIZE, Pipeline, Step
from fedlm.updates.quantize import Quantized, dequantize, quantize
from fedlm.updates.rotate import padded_size, rotate, unrotate
from fedlm.updates.sparsify import kept_count, random_mask, top_k

Encoder = Callable[[np.ndarray, Task, "np.ndarray | None"], dict[str, float]]
# (delta, task, residual) -> (metrics, the wire payload); the delta is decoded in place as by Encoder
WireEncoder = Callable[[np.ndarray, Task, "np.ndarray | None"], tuple[dict[str, float], bytes]]


def mask_seed(seed: int, round: int) -> int:
    """The random mask of a round: shared by its whole cohort, so masked updates sum coordinate-wise."""
    return derive_seed(seed, "sparsify-mask", round)


def rotation_seed(seed: int, task: Task) -> int:
    """The signs of one client's rotation in one round: the server redraws them to unrotate."""
    return derive_seed(seed, "rotate", task.round, task.client_id)


@dataclass(frozen=True)
class Compression:
    """The compressing client steps of a pipeline; both None: updates travel dense."""

    sparsifier: Step | None
    quantizer: Step | None

    @property
    def rotates(self) -> bool:
        return self.quantizer is not None and bool(self.quantizer.param("rotate"))

    @property
    def sends_indices(self) -> bool:
        return self.sparsifier is not None and self.sparsifier.name == "top_k"

    @property
    def kind(self) -> str:
        """The wire payload kind this compression produces (updates.wire.KINDS)."""
        if self.quantizer is None:
            return "dense" if self.sparsifier is None else "sparse"
        return "quantized" if self.sparsifier is None else "quantized_sparse"


def compression_of(pipeline: Pipeline) -> Compression:
    steps = {s.stage.name: s for s in pipeline.client_steps}
    return Compression(steps.get("SPARSIFY"), steps.get("QUANTIZE"))


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


def shared_grid(step: Step, clip_norm: float, count: int) -> SharedGrid:
    """The cohort's grid for `count` values at this clip norm (the rotation's padded length when it rotates)."""
    coded = padded_size(count) if step.param("rotate") else count
    return SharedGrid(int(step.param("bits")), clip_norm, coded, step.param("spread"))


def secagg_grid(pipeline: Pipeline, *, clip_norm: float, size: int) -> SharedGrid | None:
    """The grid a SecAgg round's inputs lie on (its step makes the integer encoding exact), or None."""
    quantizer = compression_of(pipeline).quantizer
    if quantizer is None or quantizer.name != SHARED_QUANTIZE:
        return None
    return shared_grid(quantizer, clip_norm, size)


def quantized_chunk(quantizer: Step, count: int) -> int:
    """Values per scale on the wire: the setting, or all of them on the shared grid (one scale)."""
    if quantizer.name != SHARED_QUANTIZE:
        return int(quantizer.param("chunk"))
    return max(padded_size(count) if quantizer.param("rotate") else count, 1)


def compress_shared(step: Step, values: np.ndarray, task: Task, seed: int) -> tuple[np.ndarray, Quantized]:
    """[rotate ->] conditional randomized rounding onto the shared grid: decoded values (norm <= the clip norm), codes."""
    grid = shared_grid(step, task.clip_norm, values.size)
    rng = make_rng(seed, "quantize", task.round, task.client_id)
    if not step.param("rotate"):
        q, decoded = quantize_shared(values, grid, rng)
        return decoded, q
    rotation = rotation_seed(seed, task)
    q, decoded = quantize_shared(rotate(values, seed=rotation), grid, rng,
                                 decode=lambda codes: unrotate(dequantize(codes), seed=rotation, size=values.size))
    return decoded, q


def compress(step: Step, values: np.ndarray, task: Task, seed: int) -> tuple[np.ndarray, Quantized]:
    """[rotate ->] stochastic quantization [-> unrotate]: the values the server decodes, and the codes sent."""
    if step.name == SHARED_QUANTIZE:
        return compress_shared(step, values, task, seed)
    bits, chunk = int(step.param("bits")), int(step.param("chunk"))
    rng = make_rng(seed, "quantize", task.round, task.client_id)
    if step.param("rotate"):
        rotation = rotation_seed(seed, task)
        q = quantize(rotate(values, seed=rotation), bits=bits, chunk=chunk, rng=rng)
        return unrotate(dequantize(q), seed=rotation, size=values.size), q
    q = quantize(values, bits=bits, chunk=chunk, rng=rng)
    return dequantize(q), q


def payload_bytes(size: int, kept: np.ndarray | None, quantizer: Step | None, sparsifier: Step | None) -> int:
    """Bytes of the wire payload: dense, quantized, sparse (indices sent only for top-k)."""
    compression = Compression(sparsifier, quantizer)
    with_indices, rotated = compression.sends_indices, compression.rotates
    count = size if kept is None else kept.size
    if quantizer is not None:
        bits, chunk = int(quantizer.param("bits")), quantized_chunk(quantizer, count)
        if kept is None:
            return wire.quantized_bytes(count, bits=bits, chunk=chunk, rotated=rotated)
        return wire.quantized_sparse_bytes(count, bits=bits, chunk=chunk, with_indices=with_indices, rotated=rotated)
    return wire.dense_bytes(size) if kept is None else wire.sparse_bytes(count, with_indices=with_indices)


def serialize_payload(vector: np.ndarray, kept: np.ndarray | None, q: Quantized | None, compression: Compression) -> bytes:
    """The wire payload of an encoded update: `vector` decoded in place, `kept` the sparsifier's indices,
    `q` the quantizer's codes (of the rotated values when the run rotates)."""
    indices = kept if compression.sends_indices else None
    count = vector.size if kept is None else kept.size
    rotated_from = count if compression.rotates else None
    if q is None:
        return wire.serialize_dense(vector) if kept is None else wire.serialize_sparse(vector[kept], indices)
    if kept is None:
        return wire.serialize_quantized(q, rotated_from=rotated_from)
    return wire.serialize_quantized_sparse(q, indices, rotated_from=rotated_from)


def _run_client_steps(steps: dict[str, Step], compression: Compression, seed: int, vector: np.ndarray, task: Task,
                      residual: np.ndarray | None) -> tuple[dict[str, float], np.ndarray | None, Quantized | None]:
    """The client steps in place on `vector`: metrics (without bytes_up), the kept indices, the codes."""
    metrics: dict[str, float] = {}
    if "CLIP" in steps:
        norm = clip_in_place(vector, task.clip_norm)
        metrics.update(update_norm=norm, unclipped=float(norm <= task.clip_norm))
    if "NOISE_SHARE" in steps:
        # each of the n expected clients adds N(0, (z C)^2 / n): the sum carries N(0, (z C)^2)
        share = steps["NOISE_SHARE"]
        add_gaussian(vector, share.param("noise_multiplier") * task.clip_norm / math.sqrt(share.param("expected_cohort")))
    sparsifier, quantizer = compression.sparsifier, compression.quantizer
    kept = select(sparsifier, vector, task, seed, residual)
    # top-k: the update plus its fed-back residual, what would ideally be sent
    wanted = vector.copy() if residual is not None else None
    values = vector if kept is None else vector[kept]
    if sparsifier is not None and sparsifier.name == "random_mask":
        values = values * np.float32(vector.size / kept.size)  # unbiased over the mask
    q = None
    if quantizer is not None:
        values, q = compress(quantizer, values, task, seed)
    if kept is not None:
        vector[:] = 0
        vector[kept] = values
    elif values is not vector:
        vector[:] = values
    if residual is not None:
        np.subtract(wanted, vector, out=residual)  # error feedback: everything not delivered
    return metrics, kept, q


def make_encoder(pipeline: Pipeline, *, seed: int) -> Encoder:
    """A function (delta, task, residual) -> metrics that runs the client steps in place.

    Metrics are numbers only: the pre-clip norm, the `unclipped` bit adaptive clipping
    counts, and `bytes_up`, the wire size of the encoded update.
    """
    steps = {s.stage.name: s for s in pipeline.client_steps}
    compression = compression_of(pipeline)

    def encode(vector: np.ndarray, task: Task, residual: np.ndarray | None = None) -> dict[str, float]:
        metrics, kept, _ = _run_client_steps(steps, compression, seed, vector, task, residual)
        metrics["bytes_up"] = float(payload_bytes(vector.size, kept, compression.quantizer, compression.sparsifier))
        return metrics

    return encode


def make_wire_encoder(pipeline: Pipeline, *, seed: int) -> WireEncoder:
    """Like `make_encoder`, and also returns the payload to upload; `bytes_up` is its length.

    The delta is decoded in place exactly as `make_encoder` leaves it (the same draws in the
    same order), and `decode_payload` gives back that vector, bit for bit, from the payload.
    """
    steps = {s.stage.name: s for s in pipeline.client_steps}
    compression = compression_of(pipeline)

    def encode(vector: np.ndarray, task: Task, residual: np.ndarray | None = None) -> tuple[dict[str, float], bytes]:
        metrics, kept, q = _run_client_steps(steps, compression, seed, vector, task, residual)
        payload = serialize_payload(vector, kept, q, compression)
        metrics["bytes_up"] = float(len(payload))
        return metrics, payload

    return encode


def decode_payload(data: bytes, *, compression: Compression, seed: int, task: Task, size: int) -> np.ndarray:
    """The dense float32 update of `size` values a client's wire payload stands for.

    Raises ValueError, saying why, for a payload this run's compression does not produce: another
    kind, other bits or chunk, rotated or not, another kept count, indices out of range.
    """
    kind, fields = wire.deserialize(data)
    if kind != compression.kind:
        raise ValueError(f"this run's compression sends {compression.kind} payloads; got a {kind} payload")
    if kind == "dense":
        vector = fields["vector"]
        if vector.size != size:
            raise ValueError(f"the update must have {size} float32 values, the payload has {vector.size}")
        return vector
    count = size if compression.sparsifier is None else kept_count(size, fraction=compression.sparsifier.param("fraction"))
    values = fields["values"] if compression.quantizer is None else _dequantized(fields, compression.quantizer, seed, task, count)
    if values.size != count:
        raise ValueError(f"this run sends {count} values per update, the payload has {values.size}")
    if compression.sparsifier is None:
        return values
    indices = fields["indices"] if compression.sends_indices else random_mask(
        size, fraction=compression.sparsifier.param("fraction"), seed=mask_seed(seed, task.round))
    if indices is None:
        raise ValueError("a top-k payload must carry the indices of its values")
    if fields["indices"] is not None and not compression.sends_indices:
        raise ValueError("a random-mask payload carries no indices: the server draws them from the round's seed")
    if indices.size and indices[-1] >= size:
        raise ValueError(f"a sparse payload's index {int(indices[-1])} is past the update's {size} values")
    vector = np.zeros(size, np.float32)
    vector[indices] = values
    return vector


def _dequantized(fields: dict, quantizer: Step, seed: int, task: Task, count: int) -> np.ndarray:
    """The quantized values as the client decoded them: dequantize [-> unrotate]."""
    q, rotated_from = fields["quantized"], fields["rotated_from"]
    bits, rotates = int(quantizer.param("bits")), bool(quantizer.param("rotate"))
    if quantizer.name != SHARED_QUANTIZE and (q.bits, q.chunk) != (bits, int(quantizer.param("chunk"))):
        raise ValueError(f"this run quantizes to {bits} bits in chunks of {int(quantizer.param('chunk'))}; the payload "
                         f"has {q.bits} and {q.chunk}")
    if rotates != (rotated_from is not None):
        raise ValueError(f"this run {'rotates' if rotates else 'does not rotate'} before quantizing; the payload "
                         f"{'is' if rotated_from is not None else 'is not'} rotated")
    if rotates and rotated_from != count:  # unrotate needs the right length to redraw the same signs
        raise ValueError(f"this run sends {count} values per update, the payload has {rotated_from}")
    if quantizer.name == SHARED_QUANTIZE:
        _check_shared_grid(q, quantizer, task, count)
    if not rotates:
        return dequantize(q)
    return unrotate(dequantize(q), seed=rotation_seed(seed, task), size=count)


def _check_shared_grid(q: Quantized, quantizer: Step, task: Task, count: int) -> None:
    """A payload on the shared grid must carry exactly the grid the server derives from the round's clip norm."""
    if not task.clip_norm > 0:
        raise ValueError("a payload on the shared grid is decoded with the round's clip norm; the task carries none")
    grid = shared_grid(quantizer, task.clip_norm, count)
    if not is_on_grid(q, grid):
        raise ValueError(f"this run quantizes {grid.count} values to {grid.bits} bits on the cohort's shared grid of scale "
                         f"{float(grid.scale):.6g}; the payload has {q.size} values, {q.bits} bits and "
                         f"{q.scales.size} scale(s) ({float(q.scales[0]) if q.scales.size else 0:.6g})")
