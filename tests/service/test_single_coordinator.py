"""One coordinator per data directory and database; blobs checked against their names on every read.

Red-team findings 2, 3 and 4 of the fleet issue: a second `fedlm serve` on the same state lost
accepted updates and deleted the live one's staged uploads; a blob changed on disk was re-folded
or served as if whole.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from fedlm.service import certs
from fedlm.service import store as db
from fedlm.service.blobs import BlobStore, CorruptBlob
from fedlm.service.instance_lock import AlreadyServing, hold_instance
from fedlm.service.runtime import build_runtime
from fedlm.service.settings import load_settings
from fedlm.service.store import Store
from fedlm.updates import wire

from conftest import INITIAL

DELTA = np.array([1, 1, 1, 1, 1, 1], np.float32)


def server_toml(root, name: str, *, port: int):
    """A server.toml in `root` over the data directory root/state (the tiny model)."""
    if not (root / "certs").exists():
        certs.init_ca(root / "certs")
    (root / "run.toml").write_text('[model]\nname = "tiny"\n')
    (root / name).write_text(f'[server]\nport = {port}\ndata_dir = "state"\nrun_config = "run.toml"\n')
    return load_settings(root / name)


def test_a_second_serve_on_the_same_state_is_refused_and_the_first_ones_staged_upload_survives(tmp_path):
    # Prepare: the first coordinator runs and has an upload in flight (a staged file).
    first = build_runtime(server_toml(tmp_path, "a.toml", port=9443))
    staged = tmp_path / "state" / "blobs" / "staging" / "in-flight"
    staged.write_bytes(b"half an upload")
    # Execute / Assert: a config differing only in its port is refused, naming the holder.
    with pytest.raises(AlreadyServing, match=r"another fedlm serve \(pid \d+\) already serves the data directory"):
        build_runtime(server_toml(tmp_path, "b.toml", port=9444))
    assert staged.read_bytes() == b"half an upload"
    # Once the first lets go (as when its process ends), a new one starts and clears what the old one left.
    first.lock.release()
    third = build_runtime(load_settings(tmp_path / "b.toml"))
    assert not staged.exists()
    third.lock.release()


def test_two_data_directories_over_one_sqlite_file_are_refused(tmp_path):
    database = tmp_path / "shared.db"
    store = Store(f"sqlite:///{database}")
    held = hold_instance(tmp_path / "a", store.engine, f"sqlite:///{database}")
    with pytest.raises(AlreadyServing, match="already serves the database"):
        hold_instance(tmp_path / "b", store.engine, f"sqlite:///{database}")
    held.release()
    hold_instance(tmp_path / "b", store.engine, f"sqlite:///{database}").release()


def test_a_second_data_directory_naming_the_first_ones_own_sqlite_file_is_refused(tmp_path):
    # Prepare: the first coordinator's database is inside its data directory (the default)
    database = tmp_path / "a" / "fedlm.db"
    database.parent.mkdir()
    store = Store(f"sqlite:///{database}")
    held = hold_instance(tmp_path / "a", store.engine, f"sqlite:///{database}")
    # Execute / Assert: a copy of the data directory with database_url pointing at the first one's file (red team 2c)
    with pytest.raises(AlreadyServing, match="already serves the database"):
        hold_instance(tmp_path / "copy", store.engine, f"sqlite:///{database}")
    held.release()
    store.dispose()


def test_two_coordinators_on_one_postgres_database_are_refused(tmp_path, postgres_url):
    store = Store(postgres_url)
    held = hold_instance(tmp_path / "a", store.engine, postgres_url)
    other = Store(postgres_url)
    with pytest.raises(AlreadyServing, match="already serves the database"):
        hold_instance(tmp_path / "b", other.engine, postgres_url)
    held.release()
    hold_instance(tmp_path / "b", other.engine, postgres_url).release()
    store.dispose()
    other.dispose()


def test_a_blob_read_checks_its_bytes_against_its_name(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    sha = blobs.put(b"global version 3")
    assert blobs.read(sha) == b"global version 3" and blobs.verified_path(sha) == blobs.path(sha)
    blobs.path(sha).write_bytes(b"global version 4")  # same length, one byte changed
    for read in (blobs.read, blobs.verified_path):
        with pytest.raises(CorruptBlob, match=rf"blob {blobs.path(sha)} .*does not hash to its name"):
            read(sha)
    blobs.path(sha).unlink()
    with pytest.raises(CorruptBlob, match="is missing"):
        blobs.read(sha)


@pytest.mark.parametrize("damage", ["rewrite", "truncate"])
def test_an_accepted_update_damaged_on_disk_is_left_out_at_restart_and_reported(service, damage):
    # Prepare: alice's update is accepted; while the coordinator is down its blob is changed on disk.
    for name in ("alice", "bob"):
        service.clients[name].post("/v1/clients/register", json={})
        service.clients[name].post("/v1/tasks/next", json={})
    body = wire.serialize_dense(DELTA)
    assert service.clients["alice"].post("/v1/rounds/1/updates", params={"version": 0, "num_samples": 1},
                                         content=body).status_code == 200
    path = service.coordinator.blobs.path(__import__("hashlib").sha256(body).hexdigest())
    data = path.read_bytes()
    path.write_bytes(data[:-4] + b"\x00\x00\x80\x7f" if damage == "rewrite" else data[: len(data) // 2])
    service.coordinator.store.dispose()
    # Execute
    restarted = service.restart()
    # Assert: nothing of alice's is folded, her task failed, the audit says why; the round goes on with bob.
    assert "alice" in restarted.rnd.failed and "alice" not in restarted.rnd.weights
    assert restarted.rnd.total.tobytes() == np.zeros(6, np.float32).tobytes()
    with restarted.store.session() as session:
        assert db.tasks_of(session, 1)["alice"] == "failed"
        events = session.scalars(select(db.AuditRow).where(db.AuditRow.event == "update_blob_corrupt")).all()
        assert [(e.client_id, e.round) for e in events] == [("alice", 1)] and str(path) in events[0].detail
    done = service.clients["bob"].post("/v1/rounds/1/updates", params={"version": 0, "num_samples": 1},
                                       content=wire.serialize_dense(-DELTA))
    service.clock.now += 101  # the deadline: the round closes with bob's update alone
    restarted.tick()
    assert done.status_code == 200 and restarted.state.version == 1
    np.testing.assert_allclose(restarted.state.global_vector, INITIAL - DELTA, rtol=1e-6)


def test_a_damaged_global_is_never_served(service):
    # Prepare: version 0's global blob gets one flipped bit.
    sha = service.coordinator.global_sha(0)
    path = service.coordinator.blobs.path(sha)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    # Execute
    answer = service.clients["alice"].get("/v1/models/0/global")
    # Assert: a 500 that says what is wrong, not the damaged bytes.
    assert answer.status_code == 500 and answer.json()["error"] == "corrupt_blob"
    assert bytes(data) not in answer.content
