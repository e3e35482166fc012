"""Read an uploaded update from its staged file, checking its structure before any value is used.

A plain update is accepted in exactly the encoding the run's compression produces:
- a run that does not compress: fedlm's dense wire format (updates.wire: the 16-byte typed
  header, then float32 values), or safetensors holding exactly one float32 tensor named
  "update" of the global's shape, told apart by their first bytes;
- a run that compresses: the wire kind its client steps produce (quantized, sparse or
  quantized_sparse, with the run's bits, chunk, rotation and kept count), decoded into the
  dense float32 vector by updates.client.decode_payload, the encoder's exact inverse. Any
  other kind, a dense one included, is refused naming both: a client that skips the run's
  compression would make the bandwidth the run reports untrue.
A SecAgg round takes the masked input instead: safetensors holding one uint32 ("U32")
tensor named "update" (its typed header says uint32; wire format has no masked kind), and
refuses float32; a plain round refuses uint32. Values are read straight from the file into
one array: the only copy of an update the server holds is the one being validated.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from fedlm.core.types import Task
from fedlm.server.rounds import ServerState
from fedlm.updates import wire
from fedlm.updates.client import Compression, decode_payload

MAX_SAFETENSORS_HEADER = 1 << 16


class MalformedUpdate(ValueError):
    """The body is not a well-formed update of the expected shape and dtype."""


def read_update(path: Path, *, size: int, compression: Compression | None = None, seed: int = 0,
                task: Task | None = None) -> np.ndarray:
    """The dense float32 update in a staged upload. A compressing run's payload needs the run's
    `compression`, its `seed` and the `task` (round, client id) to redraw a random mask and unrotate."""
    total = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(wire.HEADER_BYTES)
    if compression is not None and compression.kind != "dense":
        return _read_compressed(path, head, size, compression, seed, task)
    if head[:4] == wire.MAGIC:
        return _read_wire(path, head, total, size)
    return _read_safetensors(path, total, size, "F32")


def _read_compressed(path: Path, head: bytes, size: int, compression: Compression, seed: int, task: Task | None) -> np.ndarray:
    if task is None:
        raise ValueError("a compressed payload is decoded for a task: its round and client id")
    if head[:4] != wire.MAGIC:
        raise MalformedUpdate(f"this run's compression sends {compression.kind} payloads in fedlm wire format; "
                              "got another format (safetensors or garbage)")
    try:  # a compressed body is a fraction of the dense one, and the upload limit bounds it
        return decode_payload(path.read_bytes(), compression=compression, seed=seed, task=task, size=size)
    except ValueError as err:
        raise MalformedUpdate(str(err)) from None


def read_masked(path: Path, *, size: int) -> np.ndarray:
    """A SecAgg masked input: safetensors with one U32 tensor "update" of `size` values."""
    with open(path, "rb") as handle:
        if handle.read(4) == wire.MAGIC:
            raise MalformedUpdate("a SecAgg round takes the masked input as safetensors uint32, not a float32 wire payload")
    return _read_safetensors(path, path.stat().st_size, size, "U32")


def masked_payload(vector: np.ndarray) -> bytes:
    """The upload body of a masked input (what `read_masked` reads)."""
    return save({"update": np.ascontiguousarray(vector, dtype=np.uint32)})


def _read_wire(path: Path, head: bytes, total: int, size: int) -> np.ndarray:
    if len(head) < wire.HEADER_BYTES:
        raise MalformedUpdate(f"payload of {total} bytes is shorter than the {wire.HEADER_BYTES}-byte header")
    try:
        kind, count, _, _, _ = wire.read_header(head)
    except ValueError as err:
        raise MalformedUpdate(str(err)) from None
    if kind != "dense":
        raise MalformedUpdate(f"this run's compression sends dense payloads; got a {kind} payload")
    if count != size:
        raise MalformedUpdate(f"the update must have {size} float32 values, the header says {count}")
    if total != wire.dense_bytes(size):
        raise MalformedUpdate(f"a dense payload of {size} values takes {wire.dense_bytes(size)} bytes, got {total}")
    return np.fromfile(path, dtype=wire.FLOAT, count=size, offset=wire.HEADER_BYTES).astype(np.float32, copy=False)


def _read_safetensors(path: Path, total: int, size: int, dtype: str) -> np.ndarray:
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise MalformedUpdate("payload is neither fedlm wire format nor safetensors (too short)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_SAFETENSORS_HEADER or 8 + header_len > total:
            raise MalformedUpdate("payload is neither fedlm wire format nor safetensors (bad header length)")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MalformedUpdate("safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise MalformedUpdate("safetensors header must be a JSON object")
    if "__metadata__" in header:  # free text would be stored verbatim with the accepted blob
        raise MalformedUpdate("safetensors __metadata__ is not accepted: an update carries its tensor only")
    tensors = header
    if set(tensors) != {"update"} or not isinstance(tensors["update"], dict):
        raise MalformedUpdate(f"safetensors payload must hold one tensor named 'update', got {sorted(tensors)[:5]}")
    entry = tensors["update"]
    if entry.get("dtype") != dtype or entry.get("shape") != [size]:
        why = {"F32": "", "U32": " (a SecAgg round's masked input)"}[dtype]
        raise MalformedUpdate(f"tensor 'update' must be {dtype}{why} of shape [{size}], got {entry.get('dtype')} {entry.get('shape')}")
    if entry.get("data_offsets") != [0, 4 * size] or total != 8 + header_len + 4 * size:
        raise MalformedUpdate("safetensors data offsets do not match the tensor's size")
    stored, kind = {"F32": ("<f4", np.float32), "U32": ("<u4", np.uint32)}[dtype]
    return np.fromfile(path, dtype=stored, count=size, offset=8 + header_len).astype(kind, copy=False)


def encode_state(state: ServerState) -> bytes:
    """The server state of one version as safetensors: arrays as tensors, the rest as metadata."""
    arrays = {"global": state.global_vector}
    arrays.update({f"opt/{i}": m for i, m in enumerate(state.opt_state)})
    meta = {
        "version": str(state.version), "rounds_done": str(state.rounds_done), "clip_norm": repr(state.clip_norm),
        "opt_state_len": str(len(state.opt_state)), "ledger": state.ledger.to_json(),
    }
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)


def decode_state(data: bytes) -> ServerState:
    from safetensors.numpy import load

    from fedlm.privacy.ledger import PrivacyLedger

    arrays = load(data)
    (header_len,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + header_len])["__metadata__"]
    return ServerState(
        version=int(meta["version"]), global_vector=arrays["global"], rounds_done=int(meta["rounds_done"]),
        opt_state=tuple(arrays[f"opt/{i}"] for i in range(int(meta["opt_state_len"]))),
        clip_norm=float(meta["clip_norm"]), ledger=PrivacyLedger.from_json(meta["ledger"]),
    )
