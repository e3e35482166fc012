"""`fedlm join`'s trainer under task.kind = "instruction": the client reads its own JSONL and trains an update."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedlm.config import RunConfig, apply_overrides, config_to_dict
from fedlm.service.local_trainer import LocalTrainer

RUN = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "task": {"kind": "instruction"}, "data": {"seq_len": 96},
                                    "client": {"local_steps": 2, "batch_size": 2}})


def served_config(update_size: int) -> dict:
    """What GET /v1/config answers."""
    return {"run": config_to_dict(RUN), "update_size": update_size, "population": 10, "max_upload_bytes": 1 << 20}


def write_client(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_a_client_trains_on_its_own_jsonl_with_the_servers_instruction_settings(tmp_path):
    # Prepare: the run's adapter size, as the server would announce it.
    from fedlm.assembly import assemble

    size = assemble(RUN, population=10).adapter.shared_spec.size
    data = write_client(tmp_path / "me.jsonl", [{"prompt": f"Count to {i}.", "completion": " ".join(map(str, range(i)))}
                                               for i in range(2, 8)])
    # Execute
    trainer = LocalTrainer.build(served_config(size), data, client_id="me", threads=1)
    global_vector = trainer.parts.adapter.initial_shared.copy()
    vector, samples, metrics = trainer.train({"round": 1, "version": 0, "clip_norm": 0.0}, global_vector)
    # Assert: one padded row per conversation, a finite update that moved, metrics of numbers only.
    assert samples == 6 and len(trainer.blocks) == 6
    assert vector.dtype == np.float32 and vector.shape == (size,) and np.isfinite(vector).all() and np.abs(vector).max() > 0
    assert metrics["steps"] == 2 and all(isinstance(v, float) for v in metrics.values())


def test_a_bad_record_is_refused_with_file_and_line_before_the_model_loads(tmp_path, monkeypatch):
    # Prepare: the second record has no assistant turn; loading a model would fail the test.
    data = write_client(tmp_path / "me.jsonl", [{"prompt": "a", "completion": "b"},
                                               {"messages": [{"role": "user", "content": "hello"}]}])
    monkeypatch.setattr("fedlm.assembly.assemble", lambda *a, **k: pytest.fail("the model loaded before the data was checked"))
    # Execute / Assert
    with pytest.raises(ValueError, match=r"me\.jsonl, line 2: .*no assistant turn"):
        LocalTrainer.build(served_config(1), data, client_id="me")


def test_a_client_reads_its_files_in_its_own_encoding(tmp_path, monkeypatch):
    # Prepare: a cp1252 site in a UTF-8 run; stop right after the data is read (no model needed)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "notes.txt").write_bytes("Caf\xe9 notes.\n\nSecond paragraph \u2013 dash.".encode("cp1252"))
    run = apply_overrides(RunConfig(), {"model": {"name": "tiny"}})
    config = {"run": config_to_dict(run), "update_size": 1, "population": 10, "max_upload_bytes": 1 << 20}
    seen = []

    def stop(run, **kwargs):
        seen.append(run.data.encoding)
        raise RuntimeError("stop here")

    monkeypatch.setattr("fedlm.assembly.assemble", stop)
    # Execute / Assert: the run's utf-8 refuses the file, naming it; --encoding cp1252 reads it
    with pytest.raises(ValueError, match=r"notes\.txt"):
        LocalTrainer.build(config, tmp_path / "site", client_id="me")
    with pytest.raises(RuntimeError, match="stop here"):
        LocalTrainer.build(config, tmp_path / "site", client_id="me", encoding="cp1252")
    assert seen == ["cp1252"]
