"""The update as one flat float32 vector, and the spec that maps it to named tensors.

Everything that travels between a client and the coordinator is a `Spec` plus a flat
float32 vector; transforms, aggregation and the wire format only ever see vectors.
Reading and writing model parameters in place (`read_into`, `write_from`) lets the
simulation swap a client's adapter weights without copying the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np
import torch

FLOAT32 = "float32"


@dataclass(frozen=True)
class Entry:
    """One named tensor inside the flat vector: its shape and where it sits."""

    name: str
    shape: tuple[int, ...]
    offset: int
    dtype: str = FLOAT32

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Spec:
    """Names, shapes and dtypes of the tensors packed into a flat vector, in order."""

    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("Spec has duplicate tensor names")
        expected = 0
        for e in self.entries:
            if e.offset != expected:
                raise ValueError(f"Spec entry {e.name!r} starts at {e.offset}, expected {expected}")
            if e.dtype != FLOAT32:
                raise ValueError(f"Spec entry {e.name!r} has dtype {e.dtype}; updates are float32")
            expected = e.stop

    @property
    def size(self) -> int:
        return self.entries[-1].stop if self.entries else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def to_json(self) -> str:
        rows = [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype} for e in self.entries]
        return json.dumps(rows, separators=(",", ":"))

    def fingerprint(self) -> str:
        """A short hash that two parties compare to agree on the layout."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def make_spec(shapes: Iterable[tuple[str, Sequence[int]]]) -> Spec:
    """Lay the named shapes out one after another."""
    entries, offset = [], 0
    for name, shape in shapes:
        entry = Entry(name=name, shape=tuple(int(d) for d in shape), offset=offset)
        entries.append(entry)
        offset = entry.stop
    return Spec(tuple(entries))


def spec_of(params: Mapping[str, torch.Tensor]) -> Spec:
    return make_spec((name, tuple(p.shape)) for name, p in params.items())


def check_vector(spec: Spec, vector: np.ndarray) -> None:
    """Raise ValueError unless `vector` is a 1-D float32 array of the spec's size."""
    if not isinstance(vector, np.ndarray):
        raise ValueError(f"update must be a numpy array, got {type(vector).__name__}")
    if vector.dtype != np.float32:
        raise ValueError(f"update dtype is {vector.dtype}, expected float32")
    if vector.shape != (spec.size,):
        raise ValueError(f"update shape is {vector.shape}, expected ({spec.size},)")


def flatten(spec: Spec, tensors: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
    """Pack named tensors into a new flat float32 vector, in spec order."""
    missing = set(spec.names) - set(tensors)
    if missing:
        raise KeyError(f"tensors missing from the update: {sorted(missing)[:5]}")
    out = np.empty(spec.size, dtype=np.float32)
    for e in spec.entries:
        value = tensors[e.name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if tuple(array.shape) != e.shape:
            raise ValueError(f"tensor {e.name!r} has shape {tuple(array.shape)}, spec says {e.shape}")
        out[e.offset : e.stop] = array.reshape(-1)
    return out


def unflatten(spec: Spec, vector: np.ndarray) -> dict[str, np.ndarray]:
    """Views of `vector` shaped as the named tensors (no copy)."""
    check_vector(spec, vector)
    return {e.name: vector[e.offset : e.stop].reshape(e.shape) for e in spec.entries}


def read_into(spec: Spec, params: Sequence[torch.Tensor], out: np.ndarray) -> np.ndarray:
    """Copy the live parameters (in spec order) into the preallocated vector `out`."""
    check_vector(spec, out)
    check_params(spec, params)
    target = torch.from_numpy(out)
    if params and params[0].device.type != "cpu":  # one device-to-host copy, not one per tensor
        target.copy_(torch.cat([p.detach().reshape(-1).to(torch.float32) for p in params]))
        return out
    for e, p in zip(spec.entries, params, strict=True):
        target[e.offset : e.stop].copy_(p.detach().reshape(-1))
    return out


def check_params(spec: Spec, params: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless `params` match the spec's entries one to one, shape for shape."""
    if len(params) != len(spec.entries):
        raise ValueError(f"{len(params)} parameters for a spec of {len(spec.entries)} tensors")
    for e, p in zip(spec.entries, params, strict=True):
        if tuple(p.shape) != e.shape:
            raise ValueError(f"parameter {e.name!r} has shape {tuple(p.shape)}, spec says {e.shape}")


def write_from(spec: Spec, params: Sequence[torch.Tensor], vector: np.ndarray) -> None:
    """Overwrite the live parameters (in spec order) with the values in `vector`, in place.

    Everything is checked before the first parameter changes.
    """
    check_vector(spec, vector)
    check_params(spec, params)
    source = torch.from_numpy(vector)
    if params and params[0].device.type != "cpu":  # one host-to-device copy, then slices on the device
        source = source.to(params[0].device)
    with torch.no_grad():
        for e, p in zip(spec.entries, params, strict=True):
            p.copy_(source[e.offset : e.stop].view(e.shape))
