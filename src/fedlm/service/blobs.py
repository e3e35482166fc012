"""Content-addressed blobs on disk: accepted updates and model versions, named by SHA-256.

An upload streams to a staging file while it is hashed and counted, so no body is ever
held whole in memory and one past the size limit is cut off as soon as it passes it.
A staged file becomes a blob by an atomic rename after fsync: a crash leaves either no
blob or a whole one, never a torn one. Every read checks the bytes against the name, so a
blob changed, truncated or lost on disk is never used as if it were whole (CorruptBlob names
the file). Only ids, sizes and hashes are logged, never bytes.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


class TooLarge(ValueError):
    """The body went past the size limit; the staged part was deleted."""


class CorruptBlob(ValueError):
    """A blob on disk is missing or no longer hashes to its name."""


@dataclass(frozen=True)
class Staged:
    path: Path
    sha256: str
    size: int


class BlobStore:
    """Blobs under `root`; uploads stage in `root/<staging>` (each replica its own folder, on the same file system, so
    that publishing a blob stays one atomic rename)."""

    def __init__(self, root: Path, staging: str = "staging") -> None:
        self.root = Path(root)
        self.staging = self.root / staging
        self.staging.mkdir(parents=True, exist_ok=True)

    def clear_staging(self) -> None:
        """Remove what a crash mid-upload left in this coordinator's staging folder; only the process that holds the
        data dir's lock (a replica: its own folder's) may."""
        for leftover in self.staging.iterdir():
            leftover.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        """The blob's bytes, checked against its name."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptBlob(f"blob {path} is missing") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptBlob(f"blob {path} ({len(data)} bytes) does not hash to its name: it was changed or damaged on disk")
        return data

    def verified_path(self, sha256: str) -> Path:
        """The blob's path, once its bytes (read in chunks) hash to its name."""
        path, digest = self.path(sha256), hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(chunk)
        except FileNotFoundError:
            raise CorruptBlob(f"blob {path} is missing") from None
        if digest.hexdigest() != sha256:
            raise CorruptBlob(f"blob {path} does not hash to its name: it was changed or damaged on disk")
        return path

    async def receive(self, chunks: AsyncIterator[bytes], *, limit: int) -> Staged:
        """Stream `chunks` into a staging file; raise TooLarge as soon as more than `limit` bytes came."""
        target = self.staging / uuid.uuid4().hex
        digest, size = hashlib.sha256(), 0
        try:
            with open(target, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"body exceeds the limit of {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return Staged(target, digest.hexdigest(), size)

    def stage_bytes(self, data: bytes) -> Staged:
        target = self.staging / uuid.uuid4().hex
        target.write_bytes(data)
        return Staged(target, hashlib.sha256(data).hexdigest(), len(data))

    def commit(self, staged: Staged) -> str:
        """Publish a staged file under its hash (fsync, then an atomic rename); returns the hash."""
        final = self.path(staged.sha256)
        if final.is_file():  # same content already stored
            staged.path.unlink(missing_ok=True)
            return staged.sha256
        final.parent.mkdir(exist_ok=True)
        with open(staged.path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(staged.path, final)
        return staged.sha256

    def put(self, data: bytes) -> str:
        return self.commit(self.stage_bytes(data))

    def discard(self, staged: Staged) -> None:
        staged.path.unlink(missing_ok=True)
