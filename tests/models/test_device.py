"""model.device, model.dtype, model.load_in_4bit, gradient checkpointing: what runs here, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlm.config import ClientSettings, ConfigError, LoraSettings, ModelSettings
from fedlm.client.train import run_task
from fedlm.core.types import Task
from fedlm.data.blocks import pack_texts
from fedlm.models.base import load_base_model
from fedlm.models.device import DeviceError, resolve_device
from fedlm.models.lora import attach_lora, is_checkpointing

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device; this machine has none (see benchmarks/gpu_check.py)")


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "gpu", "CPU"])
def test_an_unknown_device_is_refused_by_the_config(device):
    with pytest.raises(ConfigError, match=r"model\.device: unknown device"):
        ModelSettings(device=device)


def test_known_devices_dtypes_and_a_4bit_request_off_cuda_in_the_config():
    assert [ModelSettings(device=d).device for d in ("auto", "cpu", "cuda", "cuda:1", "mps")] == ["auto", "cpu", "cuda", "cuda:1", "mps"]
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        ModelSettings(dtype="int8")
    with pytest.raises(ConfigError, match=r"model\.load_in_4bit: needs a CUDA device"):
        ModelSettings(device="cpu", load_in_4bit=True)


def test_auto_picks_the_best_device_this_machine_has():
    expected = "cuda" if CUDA else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_refused_before_loading():
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        load_base_model("tiny", device="cuda")
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        load_base_model("tiny", device="auto", load_in_4bit=True)


def one_update(base, blocks, **settings) -> np.ndarray:
    adapter = attach_lora(base, LoraSettings(), seed=0)
    out = np.empty_like(adapter.initial_shared)
    run_task(adapter, Task(round=1, version=0, client_id="c"), global_vector=adapter.initial_shared,
             private_vector=adapter.initial_private.copy(), train_blocks=blocks,
             settings=ClientSettings(local_steps=2, batch_size=2, **settings), seed=0, out=out)
    return out


def test_gradient_checkpointing_gives_the_same_update():
    # Prepare
    plain, checkpointed = load_base_model("tiny"), load_base_model("tiny", gradient_checkpointing=True)
    blocks = pack_texts(plain.tokenizer, ["To be, or not to be, that is the question"] * 4, 16)
    # Execute
    a, b = one_update(plain, blocks), one_update(checkpointed, blocks)
    # Assert: recomputing activations changes memory, not arithmetic.
    assert is_checkpointing(checkpointed.model) and not is_checkpointing(plain.model)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert np.abs(a).max() > 1e-4


def test_bfloat16_base_weights_train_a_float32_adapter_close_to_the_float32_run():
    # Prepare
    full, half = load_base_model("tiny"), load_base_model("tiny", dtype="bfloat16")
    blocks = pack_texts(full.tokenizer, ["To be, or not to be, that is the question"] * 4, 16)
    # Execute
    a, b = one_update(full, blocks), one_update(half, blocks)
    # Assert: the base is bfloat16, the update float32 numpy, near the float32 update (bfloat16 has 8 bits of mantissa).
    assert next(half.model.parameters()).dtype == torch.bfloat16 and b.dtype == np.float32
    assert np.linalg.norm(a - b) < 0.1 * np.linalg.norm(a)


@needs_cuda
def test_on_cuda_the_adapter_vector_round_trips_exactly():
    base = load_base_model("tiny", device="cuda")
    adapter = attach_lora(base, LoraSettings(), seed=0)
    vector = np.random.default_rng(0).standard_normal(adapter.shared_spec.size).astype(np.float32)
    adapter.write_shared(vector)
    assert adapter.shared_params[0].device.type == "cuda"
    assert adapter.read_shared(np.empty_like(vector)).tobytes() == vector.tobytes()


@needs_cuda
def test_on_cuda_4bit_loading_trains_an_update():
    pytest.importorskip("bitsandbytes", reason="4-bit loading needs bitsandbytes: pip install 'fedlm[gpu]'")
    base = load_base_model("tiny", device="cuda", dtype="bfloat16", load_in_4bit=True)
    blocks = pack_texts(base.tokenizer, ["To be, or not to be, that is the question"] * 4, 16)
    update = one_update(base, blocks)
    assert base.quantized and np.isfinite(update).all() and np.abs(update).max() > 0
