"""Blobs in an S3-compatible object store (server.blob_url = "s3://bucket/prefix"), for replicas on several machines.

The blob store every replica reaches: the filesystem path (server.data_dir/blobs, shared) by
default, or an object store (AWS S3, MinIO, Ceph, ...) through boto3, the AWS SDK (why boto3:
it is the reference client, speaks every S3-compatible endpoint, and does multipart uploads and
retries itself; fedlm adds only the content addressing). Objects are named like the files:
`<prefix>/<first two hex>/<rest of the SHA-256>`, so a blob's name is its hash and a blob that
already exists is never written again.

Uploads still stream into this replica's local staging folder (hashed and counted as they
arrive, service.blobs); publishing one uploads the staged file and keeps it as the local copy.
A read goes to the local copy when it hashes to its name, else fetches the object into the
cache (a temporary file renamed when whole) and checks it: an object changed or damaged in the
store is CorruptBlob, never used. Only ids, sizes and hashes are logged, never bytes.
Credentials and region come from boto3's usual chain (environment, ~/.aws, instance role).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from fedlm.service.blobs import CHUNK, BlobStore, CorruptBlob, Staged


def parse_blob_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix") of "s3://bucket/prefix" (the prefix may be empty); ValueError otherwise."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ValueError(f"server.blob_url must be s3://bucket[/prefix], got {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


class ObjectBlobStore(BlobStore):
    """Published blobs in an object store, with a verified local cache under `root`; staging stays local."""

    def __init__(self, root: Path, url: str, *, endpoint: str = "", staging: str = "staging",
                 client: Any = None) -> None:
        super().__init__(root, staging)
        self.bucket, self.prefix = parse_blob_url(url)
        if client is None:
            import boto3  # optional: pip install 'fedlm[s3]'

            client = boto3.client("s3", endpoint_url=endpoint or None)
        self.client = client

    def key(self, sha256: str) -> str:
        self.path(sha256)  # refuses anything but a hex digest
        name = f"{sha256[:2]}/{sha256[2:]}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _stored(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def exists(self, sha256: str) -> bool:
        return self._stored(sha256)

    def verified_path(self, sha256: str) -> Path:
        """The local copy once it hashes to its name, fetched from the store first when it is missing or damaged."""
        try:
            return super().verified_path(sha256)
        except CorruptBlob:
            return self._fetch(sha256)

    def read(self, sha256: str) -> bytes:
        return self.verified_path(sha256).read_bytes()

    def _fetch(self, sha256: str) -> Path:
        from botocore.exceptions import ClientError

        final, digest = self.path(sha256), hashlib.sha256()
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}")
        where = f"s3://{self.bucket}/{self.key(sha256)}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
            with open(partial, "wb") as out:
                for chunk in iter(lambda: body.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except ClientError as err:
            partial.unlink(missing_ok=True)
            raise CorruptBlob(f"blob {where} is missing ({err.response.get('Error', {}).get('Code')})") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise CorruptBlob(f"blob {where} does not hash to its name: it was changed or damaged in the store")
        partial.replace(final)
        return final

    def commit(self, staged: Staged) -> str:
        """Upload a staged file under its hash (unless the store has it) and keep it as the local copy."""
        if not self._stored(staged.sha256):
            self.client.upload_file(str(staged.path), self.bucket, self.key(staged.sha256))
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.path.replace(final)
        return staged.sha256
