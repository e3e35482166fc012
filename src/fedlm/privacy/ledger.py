"""The run's privacy ledger: every round's DP event, in order, persisted with the run.

epsilon is always recomputed from the recorded events by dp-accounting (DP-FedAvg, McMahan et
al. 2018, arXiv:1710.06963), so a resumed run continues the count exactly. The ledger is frozen:
`record` returns a new one and a rejected event leaves the old one as it was.

JSON, not pickle, and not dp-accounting's `from_named_tuple` either: that imports whatever
module and calls whatever class a stored name says. Here only these event types are read back:
Gaussian, PoissonSampled, SampledWithoutReplacement, Composed and SelfComposed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import dp_accounting

from fedlm.privacy.accountant import epsilon_of, neighboring_relation

FORMAT_VERSION = 1

# type -> its fields, each "float", "int", "event" or "events", in dp-accounting's order
_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {
    dp_accounting.GaussianDpEvent: (("noise_multiplier", "float"),),
    dp_accounting.PoissonSampledDpEvent: (("sampling_probability", "float"), ("event", "event")),
    dp_accounting.SampledWithoutReplacementDpEvent: (
        ("source_dataset_size", "int"), ("sample_size", "int"), ("event", "event")),
    dp_accounting.ComposedDpEvent: (("events", "events"),),
    dp_accounting.SelfComposedDpEvent: (("event", "event"), ("count", "int")),
}
_TYPES = {cls.__name__: cls for cls in _FIELDS}


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    event: dp_accounting.DpEvent

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round must be an integer >= 0, got {self.round!r}")
        check_event(self.event)


@dataclass(frozen=True)
class PrivacyLedger:
    entries: tuple[LedgerEntry, ...] = ()

    def __post_init__(self) -> None:
        entries = tuple(self.entries)
        if not all(isinstance(entry, LedgerEntry) for entry in entries):
            raise ValueError("entries must be LedgerEntry objects")
        for before, after in zip(entries, entries[1:]):
            if after.round <= before.round:
                raise ValueError(f"rounds must strictly increase: round {after.round} after round {before.round}")
        neighboring_relation([entry.event for entry in entries])
        object.__setattr__(self, "entries", entries)

    @property
    def last_round(self) -> int | None:
        return self.entries[-1].round if self.entries else None

    def record(self, round: int, event: dp_accounting.DpEvent) -> PrivacyLedger:
        """A new ledger with `event` spent in `round`, which must come after every recorded round."""
        entry = LedgerEntry(round, event)
        if self.entries and round <= self.entries[-1].round:
            raise ValueError(f"round must be > the last recorded round ({self.entries[-1].round}), got {round}")
        return PrivacyLedger(self.entries + (entry,))

    def epsilon(self, *, delta: float, accountant: str = "rdp") -> float:
        """epsilon at `delta` of every recorded round."""
        return epsilon_of(self.events(), delta=delta, accountant=accountant)

    def epsilon_if(self, event: dp_accounting.DpEvent, *, delta: float, accountant: str = "rdp") -> float:
        """epsilon if `event` were spent next: a round that would pass the budget is never started."""
        check_event(event)
        return epsilon_of(self.events() + [event], delta=delta, accountant=accountant)

    def events(self) -> list[dp_accounting.DpEvent]:
        return [entry.event for entry in self.entries]

    def to_json(self) -> str:
        entries = [{"round": entry.round, "event": _encode(entry.event)} for entry in self.entries]
        return json.dumps({"version": FORMAT_VERSION, "entries": entries}, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"privacy ledger is not valid JSON: {err}") from None
        _expect_keys("privacy ledger", data, {"version", "entries"})
        if data["version"] != FORMAT_VERSION:
            raise ValueError(f"privacy ledger version {data['version']!r} is not {FORMAT_VERSION}")
        if not isinstance(data["entries"], list):
            raise ValueError("privacy ledger entries must be a list")
        entries = []
        for item in data["entries"]:
            _expect_keys("ledger entry", item, {"round", "event"})
            entries.append(LedgerEntry(item["round"], _decode(item["event"])))
        return cls(tuple(entries))


def check_event(event: dp_accounting.DpEvent) -> None:
    """Raise ValueError unless `event` is built only from the types the ledger stores, with sane values."""
    if type(event) not in _FIELDS:
        raise ValueError(f"the privacy ledger cannot store {type(event).__name__}; known: {sorted(_TYPES)}")
    for name, kind in _FIELDS[type(event)]:
        _check_field(type(event).__name__, name, kind, getattr(event, name))
    if isinstance(event, dp_accounting.PoissonSampledDpEvent) and not 0 < event.sampling_probability <= 1:
        raise ValueError(f"sampling_probability must be in (0, 1], got {event.sampling_probability}")
    fixed = isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent)
    if fixed and event.sample_size > event.source_dataset_size:
        raise ValueError(f"sample_size {event.sample_size} exceeds source_dataset_size {event.source_dataset_size}")


def _check_field(owner: str, name: str, kind: str, value: object) -> None:
    where = f"{owner}.{name}"
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{where} must be a finite number > 0, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where} must be an integer >= 1, got {value!r}")
    elif kind == "event":
        check_event(value)
    else:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{where} must be a non-empty list of events")
        for inner in value:
            check_event(inner)


def _encode(event: dp_accounting.DpEvent) -> dict:
    check_event(event)
    encoded: dict = {"type": type(event).__name__}
    for name, kind in _FIELDS[type(event)]:
        value = getattr(event, name)
        if kind == "event":
            value = _encode(value)
        elif kind == "events":
            value = [_encode(inner) for inner in value]
        encoded[name] = value
    return encoded


def _decode(data: object) -> dp_accounting.DpEvent:
    if not isinstance(data, dict) or data.get("type") not in _TYPES:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"unknown DP event type {kind!r} in the privacy ledger; known: {sorted(_TYPES)}")
    cls = _TYPES[data["type"]]
    fields = _FIELDS[cls]
    _expect_keys(data["type"], data, {"type", *(name for name, _ in fields)})
    values = []
    for name, kind in fields:
        value = data[name]
        if kind == "event":
            value = _decode(value)
        elif kind == "events":
            if not isinstance(value, list):
                raise ValueError(f"{data['type']}.{name} must be a list")
            value = [_decode(inner) for inner in value]
        values.append(value)
    event = cls(*values)
    check_event(event)
    return event


def _expect_keys(what: str, data: object, keys: set[str]) -> None:
    if not isinstance(data, dict) or set(data) != keys:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{what} must have exactly the keys {sorted(keys)}, got {found}")
