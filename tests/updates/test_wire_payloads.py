"""The payload `fedlm join` uploads: the server decodes from it, bit for bit, the vector the simulation folds."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.config import CompressionSettings, LoraSettings, StrategySettings
from fedlm.core.types import Task
from fedlm.core.vectors import make_spec
from fedlm.updates import wire
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import compression_of, decode_payload, make_encoder, make_wire_encoder
from fedlm.updates.quantize import quantize

SIZE = 1000
SPEC = make_spec([("m.lora_A.w", (10, 50)), ("m.lora_B.w", (50, 10))])
SEED = 11
TASK = Task(round=3, version=2, client_id="alice")

MODES = {
    "dense": ({}, "dense"),
    "8-bit": ({"quantize_bits": 8, "chunk": 256}, "quantized"),
    "4-bit rotated": ({"quantize_bits": 4, "chunk": 128, "rotate": True}, "quantized"),
    "random mask": ({"sparsify": "random", "fraction": 0.25}, "sparse"),
    "top-k": ({"sparsify": "top_k", "fraction": 0.1}, "sparse"),
    "random mask + 8-bit": ({"sparsify": "random", "fraction": 0.25, "quantize_bits": 8, "chunk": 64}, "quantized_sparse"),
    "top-k + 4-bit": ({"sparsify": "top_k", "fraction": 0.1, "quantize_bits": 4, "chunk": 32}, "quantized_sparse"),
    "top-k + rotated 8-bit": ({"sparsify": "top_k", "fraction": 0.1, "quantize_bits": 8, "chunk": 32, "rotate": True},
                              "quantized_sparse"),
}


def pipeline(**compression):
    return build_pipeline(StrategySettings(), LoraSettings(), SPEC, None, CompressionSettings(**compression))


def delta(seed=0):
    return np.random.default_rng(seed).normal(size=SIZE).astype(np.float32)


def residual_for(compression):
    return np.full(SIZE, 0.01, np.float32) if compression.get("sparsify") == "top_k" else None


@pytest.mark.parametrize("mode", MODES)
def test_server_decodes_exactly_the_vector_the_simulation_folds(mode):
    compression, kind = MODES[mode]
    # Prepare: the same delta and residual for the simulation's encoder and join's wire encoder
    chain = pipeline(**compression)
    folded, sent = delta(), delta()
    sim_residual, join_residual = residual_for(compression), residual_for(compression)
    # Execute
    sim_metrics = make_encoder(chain, seed=SEED)(folded, TASK, sim_residual)
    join_metrics, payload = make_wire_encoder(chain, seed=SEED)(sent, TASK, join_residual)
    decoded = decode_payload(payload, compression=compression_of(chain), seed=SEED, task=TASK, size=SIZE)
    # Assert: bit for bit the same vector, residual and metrics; bytes_up is the payload's length
    assert wire.read_header(payload)[0] == kind
    assert decoded.dtype == np.float32 and decoded.tobytes() == folded.tobytes() == sent.tobytes()
    assert sim_residual is None or sim_residual.tobytes() == join_residual.tobytes()
    assert sim_metrics == join_metrics and join_metrics["bytes_up"] == len(payload)


def test_eight_bit_payload_is_a_quarter_of_dense_plus_scales():
    _, payload = make_wire_encoder(pipeline(quantize_bits=8, chunk=250), seed=SEED)(delta(), TASK, None)
    # 1000 one-byte codes + 4 float32 scales + the header, against 4000 bytes + header dense
    assert len(payload) == 16 + 1000 + 16 and wire.dense_bytes(SIZE) == 4016


def test_random_mask_sends_no_indices_and_top_k_sends_k():
    _, masked = make_wire_encoder(pipeline(sparsify="random", fraction=0.25), seed=SEED)(delta(), TASK, None)
    _, top = make_wire_encoder(pipeline(sparsify="top_k", fraction=0.1), seed=SEED)(delta(), TASK, np.zeros(SIZE, np.float32))
    assert len(masked) == 16 + 4 * 250
    assert len(top) == 16 + 4 * 100 + 4 * 100


def test_rotated_top_k_sends_k_indices_not_the_padded_count():
    # k = 100 values rotate to 128 codes; the indices stay 100 (the flag says the body is padded)
    _, payload = make_wire_encoder(pipeline(sparsify="top_k", fraction=0.1, quantize_bits=8, chunk=32, rotate=True),
                                   seed=SEED)(delta(), TASK, np.zeros(SIZE, np.float32))
    assert len(payload) == 16 + 4 * 4 + 128 + 4 * 100


def encoded(compression, task=TASK):
    residual = residual_for(compression)
    return make_wire_encoder(pipeline(**compression), seed=SEED)(delta(), task, residual)[1]


REFUSALS = {
    "dense to a quantizing run": ({}, {"quantize_bits": 8, "chunk": 256}, "sends quantized payloads; got a dense"),
    "quantized to a dense run": ({"quantize_bits": 8, "chunk": 256}, {}, "sends dense payloads; got a quantized"),
    "other bits": ({"quantize_bits": 4, "chunk": 256}, {"quantize_bits": 8, "chunk": 256}, "8 bits in chunks of 256"),
    "other chunk": ({"quantize_bits": 8, "chunk": 128}, {"quantize_bits": 8, "chunk": 256}, "8 bits in chunks of 256"),
    "not rotated": ({"quantize_bits": 8, "chunk": 256}, {"quantize_bits": 8, "chunk": 256, "rotate": True},
                    "rotates before quantizing; the payload is not"),
    "other fraction": ({"sparsify": "random", "fraction": 0.5}, {"sparsify": "random", "fraction": 0.25},
                       "250 values per update, the payload has 500"),
    "top-k to a random-mask run": ({"sparsify": "top_k", "fraction": 0.25}, {"sparsify": "random", "fraction": 0.25},
                                   "carries no indices"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_payload_the_run_does_not_produce_is_refused_naming_both(case):
    sent_by, run, message = REFUSALS[case]
    with pytest.raises(ValueError, match=message):
        decode_payload(encoded(sent_by), compression=compression_of(pipeline(**run)), seed=SEED, task=TASK, size=SIZE)


def test_top_k_index_past_the_update_is_refused():
    values = np.ones(2, np.float32)
    payload = wire.serialize_sparse(values, np.array([5, SIZE], np.int64))
    with pytest.raises(ValueError, match=f"index {SIZE} is past"):
        decode_payload(payload, compression=compression_of(pipeline(sparsify="top_k", fraction=0.002)), seed=SEED,
                       task=TASK, size=SIZE)


def test_rotated_flag_round_trips_and_refuses_a_wrong_padding():
    q = quantize(np.ones(128, np.float32), bits=8, chunk=32, rng=np.random.default_rng(0))
    kind, fields = wire.deserialize(wire.serialize_quantized(q, rotated_from=100))
    assert kind == "quantized" and fields["rotated_from"] == 100 and fields["quantized"].size == 128
    with pytest.raises(ValueError, match="rotation of 60 values has 64 codes"):
        wire.serialize_quantized(q, rotated_from=60)
