"""Blobs in an S3-compatible object store (service.object_blobs), against a local S3 server (moto's, in a thread).

Skipped, saying why, where boto3 or moto's server is not installed (`make test` installs both).
"""

from __future__ import annotations

import hashlib
import socket

import numpy as np
import pytest

from fedlm.service.blobs import CorruptBlob
from fedlm.service.settings import settings_from_dict
from fedlm.config import ConfigError
from fedlm.updates import wire

from conftest import INITIAL, build_service

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install 'fedlm[s3]'")
moto_server = pytest.importorskip("moto.server", reason="moto's S3 server is not installed: pip install 'moto[server]'")

from fedlm.service.object_blobs import ObjectBlobStore, parse_blob_url  # noqa: E402  (after the skips)

BUCKET = "fedlm-blobs"


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def store(tmp_path, name, client):
    return ObjectBlobStore(tmp_path / name, f"s3://{BUCKET}/federation-a", client=client)


def test_a_blob_published_by_one_replica_is_read_by_another_through_the_store(tmp_path, s3):
    # Prepare
    first, second = store(tmp_path, "a", s3), store(tmp_path, "b", s3)
    data = b"\x00\x01 an update's bytes " * 1000
    # Execute
    sha = first.put(data)
    # Assert: one object under the prefix, named by its hash; the other replica fetches and checks it
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sha == hashlib.sha256(data).hexdigest() and keys == [f"federation-a/{sha[:2]}/{sha[2:]}"]
    assert second.read(sha) == data and second.exists(sha) and not second.exists("0" * 64)
    assert second.path(sha).read_bytes() == data  # now cached locally
    assert not any(first.staging.iterdir())


def test_an_object_changed_in_the_store_is_refused_and_a_damaged_local_copy_is_fetched_again(tmp_path, s3):
    # Prepare
    first, second = store(tmp_path, "a", s3), store(tmp_path, "b", s3)
    sha = first.put(b"the real bytes")
    first.path(sha).write_bytes(b"the real bytez")  # the local copy damaged on disk
    # Execute / Assert: the local copy is replaced by the stored one
    assert first.read(sha) == b"the real bytes"
    # Execute: the stored object is replaced by other bytes
    s3.put_object(Bucket=BUCKET, Key=first.key(sha), Body=b"other bytes")
    # Assert: a replica without a good local copy refuses it, and leaves no partial file behind
    with pytest.raises(CorruptBlob, match=r"s3://fedlm-blobs/federation-a/.* does not hash to its name"):
        second.read(sha)
    with pytest.raises(CorruptBlob, match="is missing"):
        second.read("ab" * 32)
    assert not [p for p in (tmp_path / "b").rglob("*") if p.is_file()]


def test_a_coordinator_runs_a_round_on_the_object_store(tmp_path, s3):
    # Prepare: the in-process service with its blobs in the object store
    service = build_service(tmp_path, f"sqlite:///{tmp_path / 'fedlm.db'}",
                            overrides={"strategy": {"weighting": "uniform"}},
                            blobs=store(tmp_path, "cache", s3))
    delta = np.array([1, 1, 1, 1, 1, 1], np.float32)
    for name in ("alice", "bob"):
        service.clients[name].post("/v1/clients/register", json={})
    tasks = {n: service.clients[n].post("/v1/tasks/next", json={}).json()["task"] for n in ("alice", "bob")}
    # Execute
    for name in ("alice", "bob"):
        answer = service.clients[name].post("/v1/rounds/1/updates", params={"version": 0, "num_samples": 1},
                                            content=wire.serialize_dense(delta * (2 if name == "bob" else 1)))
        assert answer.status_code == 200, answer.text
    # Assert: version 1 is the mean, its global is served from the store's blob, and a restart on an empty cache works
    np.testing.assert_allclose(service.coordinator.state.global_vector, INITIAL + 1.5 * delta, rtol=1e-6)
    body = service.clients["alice"].get("/v1/models/1/global").content
    assert hashlib.sha256(body).hexdigest() == service.coordinator.global_sha(1) != tasks["alice"]["global_sha256"]
    assert wire.deserialize(body)[1]["vector"].tobytes() == service.coordinator.state.global_vector.tobytes()
    stored = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert len(stored) >= 5  # version 0's state and global, two updates, version 1's state and global (some may share)


def test_blob_url_settings_are_checked():
    with pytest.raises(ConfigError, match=r"server\.blob_url: must be"):
        settings_from_dict({"server": {"blob_url": "gs://bucket"}})
    with pytest.raises(ConfigError, match=r"server\.blob_endpoint: applies with server\.blob_url only"):
        settings_from_dict({"server": {"blob_endpoint": "http://127.0.0.1:9000"}})
    assert parse_blob_url("s3://bucket/a/b/") == ("bucket", "a/b") and parse_blob_url("s3://bucket") == ("bucket", "")
