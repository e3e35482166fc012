"""The [data] and [redaction] tables: where the clients' text comes from, how it is read, and what is redacted."""

from __future__ import annotations

from dataclasses import dataclass

from fedlm.settings_checks import require

OVERLONG = ("truncate", "drop")
# PII redacted before tokenization (fedlm.data.redaction), in the order in which they claim text
REDACTION_ENTITIES = ("EMAIL", "IBAN", "US_SSN", "NATIONAL_ID", "CREDIT_CARD", "IP_ADDRESS", "DATE_OF_BIRTH", "DATE",
                      "RECORD_ID", "PHONE", "PERSON")
PLACEHOLDER_STYLES = ("type", "redacted")  # "<EMAIL>" or "<REDACTED>"


@dataclass(frozen=True)
class DataSettings:
    source: str = "shakespeare"  # "shakespeare" or "folder"
    path: str = ""  # the folder, for source = "folder"
    min_lines: int = 20  # shakespeare: a (play, role) needs this many verse lines to be a client
    test_fraction: float = 0.2  # share of each client's samples held out for evaluation
    seq_len: int = 128  # tokens per training/evaluation sequence (texts are packed; a conversation is one sequence)
    overlong: str = "truncate"  # instruction: a conversation past seq_len is "truncate"d (its end cut) or "drop"ped; counted
    encoding: str = "utf-8"  # text encoding of every file under data.path: a Python codec ("utf-8" drops a BOM; "cp1252", "utf-16")

    @staticmethod
    def is_text_codec(name: str) -> bool:
        """A text codec of the standard library (codecs.lookup alone: an installed package may answer any name)."""
        import encodings

        info = encodings.search_function(name.lower()) if isinstance(name, str) else None
        return info is not None and info._is_text_encoding  # base64, rot13 and the like are not text

    def __post_init__(self) -> None:
        require(self.is_text_codec(self.encoding), "data.encoding",
                f"{self.encoding!r} is not a text encoding Python knows (e.g. 'utf-8', 'cp1252', 'utf-16')")
        require(self.overlong in OVERLONG, "data.overlong", f"must be one of {OVERLONG}")
        require(self.source in ("shakespeare", "folder"), "data.source", "must be 'shakespeare' or 'folder'")
        require(self.source != "folder" or bool(self.path), "data.path", "is required when data.source = 'folder'")
        require(self.min_lines >= 1, "data.min_lines", "must be >= 1")
        require(0 < self.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")
        require(8 <= self.seq_len <= 4096, "data.seq_len", "must be in [8, 4096]")


@dataclass(frozen=True)
class RedactionSettings:
    enabled: str = "auto"  # "auto" (on for data.source = "folder", off for the embedded plays), "on" or "off"
    entities: tuple[str, ...] = REDACTION_ENTITIES  # PII types replaced before tokenization (fedlm.data.redaction)
    placeholder: str = "type"  # "type": a value becomes its type ("<EMAIL>"); "redacted": every value becomes "<REDACTED>"

    def __post_init__(self) -> None:
        require(self.enabled in ("auto", "on", "off"), "redaction.enabled", "must be 'auto', 'on' or 'off'")
        unknown = [e for e in self.entities if e not in REDACTION_ENTITIES]
        require(not unknown, "redaction.entities", f"unknown {unknown}; known: {', '.join(REDACTION_ENTITIES)}")
        require(len(self.entities) > 0 or self.enabled != "on", "redaction.entities",
                "must name at least one type with redaction.enabled = 'on'")
        require(self.placeholder in PLACEHOLDER_STYLES, "redaction.placeholder", f"must be one of {PLACEHOLDER_STYLES}")
