"""Exports a user can hand on: the base model they name, the model card, readable files, merged models."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedlm.config import LoraSettings
from fedlm.models import base as base_module
from fedlm.models import card
from fedlm.models.base import load_base_model
from fedlm.models.card import BaseOrigin, RunFacts, base_origin, model_card
from fedlm.models.lora import attach_lora, export_adapter, save_merged
from fedlm.models.output_dir import current_umask, write_output_dir
from fedlm.models.tiny import TINY_NAME

HUB = BaseOrigin("HuggingFaceTB/SmolLM2-135M-Instruct", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                 gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")

CONFIG = {
    "run": {"seed": 7},
    "model": {"name": "smollm2"},
    "task": {"kind": "causal_lm"},
    "lora": {"r": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"], "aggregation": "fedit"},
    "data": {"source": "folder", "path": "/hospitals/secret-site-names", "seq_len": 128},
    "federation": {"rounds": 4, "clients_per_round": 5, "sampling": "fixed"},
    "client": {"local_steps": 6, "batch_size": 4, "lr": 0.002, "optimizer": "adamw"},
    "strategy": {"aggregator": "mean", "server_optimizer": "sgd", "server_lr": 1.0, "weighting": "uniform", "clip_norm": 0.5},
    "privacy": {"noise_multiplier": 1.1, "placement": "central", "delta": 0.0, "accountant": "rdp"},
    "compression": {"quantize_bits": 8, "chunk": 2048, "rotate": True, "sparsify": "none", "fraction": 1.0},
    "secagg": {"enabled": True, "neighbours": 0},
    "eval": {"held_out_clients": False},
}
SUMMARY = {
    "status": "completed", "dataset": "folder", "population": 5, "eval_clients": 5, "rounds_done": 3, "version": 3,
    "training_data": {"samples": 240, "sequences": 512}, "pipeline": "clip -> quantize -> mean -> sgd",
    "epsilon": 3.21, "delta": 1e-5, "noise_multiplier": 1.1, "clip_norm": 0.5,
    "base": {"loss": 2.5, "perplexity": 12.1825, "accuracy": 0.4, "tokens": 900},
    # a nested per-client entry: client ids come from the data and stay out of the card
    "final": {"loss": 2.0, "perplexity": 7.3891, "accuracy": 0.5, "tokens": 900,
              "per_client": {"patient-jane-doe": {"loss": 1.9}}},
}
RECORDS = [{"round": r, "accepted": 5, "train_tokens": 4096, "train_loss": 3.0 - r / 10,
            "eval": {"loss": 2.5 - r / 6, "perplexity": float(np.exp(2.5 - r / 6))}} for r in (1, 2, 3)]


def front_matter(text: str) -> dict:
    _, header, _ = text.split("---\n", 2)
    return yaml.safe_load(header)


# ---- the base model an export names -------------------------------------------------------------


def test_base_origin_names_what_a_reader_can_load(tmp_path):
    # Prepare
    hf_dir, gguf = tmp_path / "my-model", tmp_path / "weights" / "m.Q8_0.gguf"
    # Execute
    smollm2 = base_origin("smollm2", "/cache/fedlm/models/SmolLM2-135M-Instruct.Q4_1-abcd")
    tiny = base_origin("tiny", "/cache/fedlm/models/tiny")
    local = base_origin(str(hf_dir), hf_dir)
    from_gguf = base_origin(str(gguf), "/cache/fedlm/models/m.Q8_0-1234")
    # Assert: the Hub id for the default, never the cache; the user's own paths as given, absolute
    assert (smollm2.name_or_path, smollm2.hub_id, smollm2.gguf_file) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "cache" not in json.dumps(smollm2.__dict__)
    assert tiny.name_or_path == "/cache/fedlm/models/tiny" and tiny.hub_id is None and "random test model" in tiny.notes[0]
    assert (local.name_or_path, local.hub_id, local.gguf_file) == (str(hf_dir), None, None)
    assert from_gguf.name_or_path == from_gguf.gguf_file == str(gguf) and "cache" not in from_gguf.name_or_path


def test_relative_user_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert base_origin("models/mine", "models/mine").name_or_path == str(tmp_path / "models" / "mine")


def test_card_names_agree_with_the_loader():
    assert (card.SMOLLM2, card.TINY, card.SMOLLM2_GGUF) == (base_module.DEFAULT_MODEL, TINY_NAME, base_module.SMOLLM2_FILE)


# ---- the model card -----------------------------------------------------------------------------


def test_model_card_of_a_dp_secagg_run_states_every_figure():
    # Execute
    text = model_card(RunFacts(CONFIG, SUMMARY, RECORDS), HUB, tool_version="0.1.0")
    meta = front_matter(text)
    # Assert: the front matter the Hub reads
    assert meta["library_name"] == "peft" and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["base_model_relation"] == "adapter"
    assert set(meta["tags"]) >= {"federated-learning", "lora", "differential-privacy", "secure-aggregation"}
    # the body: sites, rounds, tokens (3 rounds x 4096), DP, SecAgg, compression, evaluation
    assert "| Data sites (clients) | 5 training clients, 5 evaluation clients |" in text
    assert "| Rounds completed | 3 of 4 |" in text
    assert "| Training tokens | 12,288 (summed over every accepted update) |" in text
    assert "(epsilon = 3.2100, delta = 1e-05)-DP" in text and "noise multiplier 1.1000" in text
    assert "| Secure aggregation | on: the server saw only each round's sum (SecAgg) |" in text
    assert "8-bit stochastic quantization (chunk 2048) after a random Hadamard rotation" in text
    assert "| perplexity | 12.1825 | 7.3891 |" in text and "| loss | 2.5000 | 2.0000 |" in text
    assert "| 3 | 2.7000 | 2.0000 | 7.3891 |" in text
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in text and "fedlm 0.1.0" in text
    # never the data's paths or client ids
    assert "secret-site-names" not in text and "jane" not in text


def test_model_card_without_privacy_says_so_and_bounds_tokens():
    # Prepare: no DP, no SecAgg; records without train_tokens
    config = {**CONFIG, "privacy": {"noise_multiplier": 0.0}, "secagg": {"enabled": False},
              "compression": {"quantize_bits": 0, "sparsify": "none"}}
    summary = {k: v for k, v in SUMMARY.items() if k not in ("epsilon", "delta", "noise_multiplier")}
    records = [{k: v for k, v in r.items() if k != "train_tokens"} for r in RECORDS]
    # Execute
    text = model_card(RunFacts(config, summary, records), HUB)
    # Assert: 15 accepted updates x 6 steps x 4 sequences x 128 tokens = 46,080
    assert "| Differential privacy | no differential privacy |" in text
    assert "nothing bounds what the weights may have memorised" in text
    assert "| Secure aggregation | off (the server saw each update) |" in text
    assert "| Compression | none (dense float32 updates) |" in text
    assert "at most 46,080 (15 accepted updates x 6 steps x 4 sequences x 128 tokens)" in text
    assert "differential-privacy" not in front_matter(text)["tags"]


def test_merged_card_and_a_local_base_without_hub_id():
    # Execute
    merged = front_matter(model_card(RunFacts(CONFIG, SUMMARY, RECORDS), HUB, merged=True))
    local = model_card(RunFacts(CONFIG), BaseOrigin("/models/mine"))
    # Assert: base_model only for a Hub id (the Hub refuses others); a card from a config alone still renders
    assert merged["library_name"] == "transformers" and merged["base_model_relation"] == "finetune"
    assert "base_model" not in front_matter(local)
    assert 'AutoModelForCausalLM.from_pretrained("/models/mine")' in local
    assert "| Rounds completed | not recorded |" in local and "No evaluation was recorded." in local


def test_long_runs_show_at_most_twenty_rounds_the_last_included():
    records = [{"round": r, "train_loss": 1.0} for r in range(1, 46)]
    rows = card.round_rows(records)
    assert len(rows) <= card.MAX_ROUND_ROWS and rows[0][0] == "1" and rows[-1][0] == "45"


# ---- output directories -------------------------------------------------------------------------


def write_two_files(tmp):
    (tmp / "sub").mkdir()
    (tmp / "a.bin").write_bytes(b"a")
    (tmp / "sub" / "b.txt").write_text("b")
    os.chmod(tmp / "a.bin", 0o600)  # as safetensors writes its files


def modes(root):
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(os.stat(path).st_mode)
    return found


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_output_files_get_the_permissions_of_the_users_own(tmp_path, umask, file_mode, dir_mode):
    # Prepare
    previous = os.umask(umask)
    try:
        # Execute
        write_output_dir(tmp_path / "out", write_two_files, overwrite=False)
    finally:
        os.umask(previous)
    # Assert
    assert modes(tmp_path / "out") == {".": dir_mode, "sub": dir_mode, "a.bin": file_mode, "sub/b.txt": file_mode}


def test_existing_output_is_refused_then_replaced_whole_with_overwrite(tmp_path):
    # Prepare
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # Execute / Assert: refused and untouched, then replaced
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        write_output_dir(out, write_two_files, overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    write_output_dir(out, write_two_files, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["a.bin", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary sibling left


def test_a_failed_export_leaves_the_previous_output_and_no_temporary(tmp_path):
    # Prepare
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def crash(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    # Execute
    with pytest.raises(RuntimeError, match="disk full"):
        write_output_dir(out, crash, overwrite=True)
    # Assert
    assert [p.name for p in out.iterdir()] == ["old.txt"] and (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_existing_directory_is_taken_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    write_output_dir(tmp_path / "empty", write_two_files, overwrite=False)
    assert (tmp_path / "empty" / "a.bin").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        write_output_dir(tmp_path / "file", write_two_files, overwrite=True)


# ---- adapters and merged models -----------------------------------------------------------------


def trained_adapter():
    """The tiny model's adapter holding seeded non-zero values (LoRA's B starts at zero, which would hide a bad merge)."""
    adapter = attach_lora(load_base_model("tiny"), LoraSettings(r=4), seed=0)
    vector = np.random.default_rng(0).normal(0, 0.05, adapter.shared_spec.size).astype(np.float32)
    adapter.write_shared(vector)
    return adapter, vector


def test_exported_adapter_names_the_base_and_holds_the_card(tmp_path):
    # Prepare
    adapter, vector = trained_adapter()
    origin = BaseOrigin("HuggingFaceTB/SmolLM2-135M-Instruct")
    # Execute
    export_adapter(adapter, vector, tmp_path / "a", base=origin, card="---\nlibrary_name: peft\n---\n# card\n")
    # Assert: the Hub id on disk, the loaded path still in memory, our card instead of PEFT's template
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert adapter.model.peft_config["default"].base_model_name_or_path == str(load_base_model("tiny").path)
    assert (tmp_path / "a" / "README.md").read_text() == "---\nlibrary_name: peft\n---\n# card\n"
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "adapter_model.safetensors").st_mode) == 0o666 & ~current_umask()


def test_adapter_export_loads_with_peft_and_merged_export_gives_the_same_logits(tmp_path):
    # Prepare
    adapter, vector = trained_adapter()
    export_adapter(adapter, vector, tmp_path / "adapter")
    ids = torch.tensor([[51, 78, 220, 65, 68, 12, 40, 3]])
    with torch.no_grad():
        expected = adapter.model(input_ids=ids).logits
        plain = adapter.model.get_base_model()
        with adapter.model.disable_adapter():
            base_logits = plain(input_ids=ids).logits
    base = load_base_model("tiny")
    # Execute
    reloaded = PeftModel.from_pretrained(load_base_model("tiny").model, tmp_path / "adapter")
    save_merged(adapter.model, base.tokenizer, tmp_path / "merged", card="# merged\n")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    # Assert: the adapter changes the logits, and both exports reproduce them
    with torch.no_grad():
        assert not torch.allclose(expected, base_logits, atol=1e-4)
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in (tmp_path / "merged").iterdir()}


def test_model_card_of_a_per_site_run_says_every_site_trained_and_names_no_site():
    # Prepare: a five-site run evaluated per site (eval.held_out_clients stays at its default, true)
    config = {**CONFIG, "eval": {"mode": "auto"}}
    sites = lambda mean, worst: {"by_site": {"site-jane": {"perplexity": worst}}, "mean_perplexity": mean,
                                 "worst_site": "site-jane", "worst_perplexity": worst}
    summary = {**SUMMARY, "eval_mode": "per_site", "base_sites": sites(12.5, 14.0), "final_sites": sites(7.5, 9.25)}
    # Execute
    text = model_card(RunFacts(config, summary, RECORDS), HUB)
    # Assert
    assert "5 training clients, 5 of them also scored on their own held-out split" in text
    assert "held out of training" not in text and "never trained" not in text
    assert "mean perplexity 12.5000 before, 7.5000 after; the worst site's 14.0000 before, 9.2500 after (1 sites)" in text
    assert "site-jane" not in text
