"""`fedlm export RUN_DIR OUT_DIR [--merged]` and `fedlm models export --merged` on the tiny model."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.config import config_from_dict
from fedlm.models.base import load_base_model
from fedlm.models.lora import attach_lora
from fedlm.sim.run import run_simulation

runner = CliRunner()
IDS = torch.tensor([[51, 78, 220, 65, 68, 12, 40, 3, 90, 17]])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny run over three sites' folders (1 round, 2 training sites), shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("export")
    for site in ("north", "south", "east"):
        (root / "sites" / site).mkdir(parents=True)
        (root / "sites" / site / "notes.txt").write_text(
            "\n\n".join(f"{site} ward round {i}: the patient rested and ate well." for i in range(12)))
    config = config_from_dict({
        "model": {"name": "tiny"}, "data": {"source": "folder", "path": str(root / "sites"), "seq_len": 32},
        "federation": {"rounds": 1, "clients_per_round": 2}, "client": {"local_steps": 2, "batch_size": 2, "lr": 0.05},
        "eval": {"clients": 1, "max_sequences": 2},
    })
    run_simulation(config, root / "run")
    return root / "run"


def said(result) -> str:
    """The command's output with the console's line wrapping undone."""
    return " ".join(result.output.split())


def modes(root):
    return {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in [root, *root.iterdir()]}


def test_adapter_export_names_the_base_writes_the_card_and_loads_with_peft(run_dir, tmp_path):
    # Prepare
    out = tmp_path / "shared"
    tiny_dir = json.loads((run_dir / "summary.json").read_text())["base_model_dir"]
    # Execute
    result = runner.invoke(app, ["export", str(run_dir), str(out)])
    # Assert
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_dir  # tiny: the local test model, documented as such in the card
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "random test model" in card
    assert "| Rounds completed | 1 of 1 |" in card and "| Differential privacy | no differential privacy |" in card
    assert "north" not in card and "patient" not in card  # no client ids, no client text
    # the run directory's own adapter already names the same base and carries the card, not PEFT's blank template
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_dir
    assert (run_dir / "adapter" / "README.md").read_text().startswith("---\nlibrary_name: peft\n")
    umask = os.umask(0o022)
    os.umask(umask)
    assert set(modes(out).values()) <= {0o666 & ~umask, 0o777 & ~umask}
    model = PeftModel.from_pretrained(load_base_model("tiny").model, out)
    exported = load_file(str(out / "adapter_model.safetensors"))
    original = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert exported.keys() == original.keys() and all(np.array_equal(exported[k], original[k]) for k in original)
    assert model.peft_config["default"].r == 8


def test_merged_export_loads_with_transformers_alone_and_matches_the_adapter(run_dir, tmp_path):
    # Prepare: the run's adapter on its base, as PEFT computes it
    peft_model = PeftModel.from_pretrained(load_base_model("tiny").model, run_dir / "adapter")
    with torch.no_grad():
        expected = peft_model(input_ids=IDS).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=IDS).logits
    # Execute
    result = runner.invoke(app, ["export", str(run_dir), str(tmp_path / "merged"), "--merged"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    # Assert
    assert result.exit_code == 0, result.output
    assert "merging the adapter and saving the full model" in said(result)
    with torch.no_grad():
        assert not torch.allclose(expected, base_logits, atol=1e-5)  # training moved the adapter off zero
        torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    assert tokenizer("To be")["input_ids"] == [51, 78, 220, 65, 68]
    assert (tmp_path / "merged" / "README.md").read_text().startswith("---\nlibrary_name: transformers\n")


def test_a_non_empty_out_dir_is_refused_unchanged_and_replaced_with_overwrite(run_dir, tmp_path):
    # Prepare
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    # Execute
    refused = runner.invoke(app, ["export", str(run_dir), str(out)])
    kept = sorted(p.name for p in out.iterdir())
    replaced = runner.invoke(app, ["export", str(run_dir), str(out), "--overwrite"])
    # Assert
    assert refused.exit_code == 2 and "not empty" in said(refused) and "--overwrite" in said(refused)
    assert kept == ["notes.txt"]
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary sibling left behind


def test_export_refuses_to_replace_the_run_or_read_a_non_run(run_dir, tmp_path):
    # Execute
    onto_run = runner.invoke(app, ["export", str(run_dir), str(run_dir), "--overwrite"])
    onto_parent = runner.invoke(app, ["export", str(run_dir), str(run_dir.parent), "--overwrite"])
    not_a_run = runner.invoke(app, ["export", str(tmp_path), str(tmp_path / "out")])
    # Assert: refused with a reason, and the run is intact
    assert onto_run.exit_code == onto_parent.exit_code == 2 and "would replace the run" in said(onto_parent)
    assert not_a_run.exit_code == 2 and "not a run directory" in said(not_a_run)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert not (tmp_path / "out").exists()


def test_models_export_merged_writes_a_registry_version_as_a_full_model(tmp_path):
    # Prepare: a coordinator's store holding version 1 (initial adapter + a seeded non-zero update)
    from fedlm.service.blobs import BlobStore
    from fedlm.service.coordinator import Coordinator
    from fedlm.service.registry import version_vector
    from fedlm.service.scheduling import Traits
    from fedlm.service.settings import load_settings
    from fedlm.service.store import Store
    from fedlm.updates import wire
    from fedlm.updates.pipeline import fedavg_pipeline

    (tmp_path / "run.toml").write_text('[model]\nname = "tiny"\n[federation]\nrounds = 1\nclients_per_round = 1\n')
    (tmp_path / "server.toml").write_text('[server]\ndata_dir = "state"\nrun_config = "run.toml"\n')
    settings = load_settings(tmp_path / "server.toml")
    run = settings.run_config()
    initial = attach_lora(load_base_model("tiny"), run.lora, seed=run.run.seed).initial_shared
    settings.data_dir.mkdir()
    blobs = BlobStore(settings.data_dir / "blobs")
    coordinator = Coordinator(Store(settings.database_url), blobs, run=run, pipeline=fedavg_pipeline(),
                              initial_global=initial, scheduling=settings.scheduling, registry=settings.registry)
    coordinator.register("site-a", Traits())
    coordinator.poll("site-a", Traits())
    delta = np.random.default_rng(1).normal(0, 0.05, initial.size).astype(np.float32)
    coordinator.submit("site-a", round=1, version=0, num_samples=4, metrics={"train_loss": 1.0},
                       staged=blobs.stage_bytes(wire.serialize_dense(delta)))
    config = str(tmp_path / "server.toml")
    # the expected logits: version 1 written into a fresh adapter
    adapter = attach_lora(load_base_model("tiny"), run.lora, seed=run.run.seed)
    adapter.write_shared(version_vector(coordinator.store, blobs, 1))
    with torch.no_grad():
        expected = adapter.model(input_ids=IDS).logits
    # Execute
    merged_run = runner.invoke(app, ["models", "export", "1", str(tmp_path / "merged"), "--merged", "--config", config])
    adapter_run = runner.invoke(app, ["models", "export", "1", str(tmp_path / "adapter"), "--config", config])
    again = runner.invoke(app, ["models", "export", "1", str(tmp_path / "adapter"), "--config", config])
    # Assert
    assert merged_run.exit_code == 0, merged_run.output
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=IDS).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert adapter_run.exit_code == 0, adapter_run.output
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "| Rounds completed | 1 of 1 |" in card and "| Data sites (clients) | 1 training clients |" in card
    assert "site-a" not in card
    assert again.exit_code == 2 and "not empty" in said(again)
