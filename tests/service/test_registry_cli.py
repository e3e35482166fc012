"""`fedlm models list | export | rollback` on a coordinator's store, with the tiny model."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.models.base import load_base_model
from fedlm.models.lora import attach_lora
from fedlm.service.blobs import BlobStore
from fedlm.service.coordinator import Coordinator
from fedlm.service.registry import version_vector
from fedlm.service.scheduling import Traits
from fedlm.service.settings import load_settings
from fedlm.service.store import Store
from fedlm.updates import wire
from fedlm.updates.pipeline import fedavg_pipeline


def make_registry(tmp_path):
    (tmp_path / "run.toml").write_text('[model]\nname = "tiny"\n[federation]\nrounds = 2\nclients_per_round = 1\n')
    (tmp_path / "server.toml").write_text('[server]\ndata_dir = "state"\nrun_config = "run.toml"\n')
    settings = load_settings(tmp_path / "server.toml")
    run = settings.run_config()
    initial = attach_lora(load_base_model("tiny"), run.lora, seed=run.run.seed).initial_shared
    settings.data_dir.mkdir()
    blobs = BlobStore(settings.data_dir / "blobs")
    coordinator = Coordinator(Store(settings.database_url), blobs, run=run, pipeline=fedavg_pipeline(), initial_global=initial,
                              scheduling=settings.scheduling, registry=settings.registry)
    coordinator.register("solo", Traits())
    for round in (1, 2):
        coordinator.poll("solo", Traits())
        delta = np.full(initial.size, 0.01 * round, np.float32)
        coordinator.submit("solo", round=round, version=round - 1, num_samples=4, metrics={"train_loss": 1.0},
                           staged=blobs.stage_bytes(wire.serialize_dense(delta)))
    return settings, coordinator, initial


def test_list_rollback_and_export(tmp_path):
    # Prepare
    settings, coordinator, initial = make_registry(tmp_path)
    runner, config = CliRunner(), str(tmp_path / "server.toml")
    # Execute
    listed = runner.invoke(app, ["models", "list", "--config", config])
    rolled = runner.invoke(app, ["models", "rollback", "1", "--config", config])
    relisted = runner.invoke(app, ["models", "list", "--config", config])
    missing = runner.invoke(app, ["models", "rollback", "9", "--config", config])
    exported = runner.invoke(app, ["models", "export", "2", str(tmp_path / "adapter"), "--config", config])
    # Assert
    assert listed.exit_code == 0 and "* v2" in listed.output and "  v1" in listed.output
    assert rolled.exit_code == 0 and "* v1" in relisted.output and "  v2" in relisted.output
    assert missing.exit_code == 2 and "no model version 9" in missing.output
    assert exported.exit_code == 0, exported.output
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    exported_values = np.sort(np.concatenate([t.ravel() for t in tensors.values()]))
    expected = version_vector(coordinator.store, coordinator.blobs, 2)
    np.testing.assert_allclose(expected, initial + 0.01 + 0.02, rtol=1e-6)
    np.testing.assert_allclose(exported_values, np.sort(expected), rtol=1e-6)
