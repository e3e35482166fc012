"""Client-side PII redaction before tokenization: values replaced by typed placeholders, counted by type.

`redact_text("mail ana@x.org", ENTITIES)` gives ("mail <EMAIL>", {"EMAIL": 1}): the model
learns the shape of the text, not the values. Counts say how many values of each type were
replaced and never what they were. Recognizers: structured values in
fedlm.data.redaction_patterns (patterns validated by python-stdnum checksums and
libphonenumber's numbering plans), names in fedlm.data.redaction_names (Faker's per-locale
name lists). Where two recognizers claim overlapping text, the one earlier in ENTITIES wins
(a card number is not also a phone number; a date is not a phone number).

Why not Presidio (microsoft/presidio), which has the same pattern recognizers with checksums:
measured here (2 CPU cores, presidio-analyzer 2.2.366 with a blank spaCy pipeline as its
NLP engine, so nothing is downloaded), it installs in about 30 s and imports in about 1 s,
but analyses about 0.013 MB/s, some thousand times slower than these recognizers, and its
e-mail recognizer's tldextract fetches the public-suffix list from the network on first use.
Without a spaCy NER model (a hub download) it finds no names either. We use the libraries it
builds on (phonenumbers) and python-stdnum for the checksums instead.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

from fedlm.config import REDACTION_ENTITIES, RedactionSettings, RunConfig
from fedlm.data.conversations import Conversation, Message
from fedlm.data.redaction_names import find_persons
from fedlm.data.redaction_patterns import (
    Found,
    find_cards,
    find_dates,
    find_emails,
    find_ibans,
    find_ip_addresses,
    find_national_ids,
    find_phones,
    find_record_ids,
    find_us_ssns,
)
from fedlm.data.types import ClientData, FederatedDataset, LabelledText

ENTITIES = REDACTION_ENTITIES  # in the order in which they claim text

# Each recognizer with the entities it reports, in the order of ENTITIES (a test checks it).
FINDERS: tuple[tuple[Callable[[str], Iterator[Found]], frozenset[str]], ...] = (
    (find_emails, frozenset({"EMAIL"})),
    (find_ibans, frozenset({"IBAN"})),
    (find_us_ssns, frozenset({"US_SSN"})),
    (find_national_ids, frozenset({"NATIONAL_ID"})),  # checksummed ids before cards: Luhn passes one number in ten
    (find_cards, frozenset({"CREDIT_CARD"})),
    (find_ip_addresses, frozenset({"IP_ADDRESS"})),
    (find_dates, frozenset({"DATE_OF_BIRTH", "DATE"})),
    (find_record_ids, frozenset({"RECORD_ID"})),
    (find_phones, frozenset({"PHONE"})),
    (find_persons, frozenset({"PERSON"})),
)

_PLACEHOLDER = re.compile("<(" + "|".join(ENTITIES) + "|REDACTED)>")
log = logging.getLogger(__name__)


def check_entities(entities: Iterable[str]) -> tuple[str, ...]:
    """`entities` as a tuple; ValueError naming the unknown ones and the known."""
    chosen = tuple(entities)
    unknown = [e for e in chosen if e not in ENTITIES]
    if unknown:
        raise ValueError(f"unknown entity type(s) {', '.join(unknown)}; known: {', '.join(ENTITIES)}")
    return chosen


def find_pii(text: str, entities: Sequence[str] = ENTITIES) -> list[Found]:
    """The non-overlapping (start, end, entity) of every value of `entities` in `text`, by start."""
    wanted = set(entities)
    starts: list[int] = []
    kept: list[Found] = []
    for finder, reports in FINDERS:
        if not reports & wanted:
            continue
        for start, end, entity in finder(text):
            if entity not in wanted:
                continue
            at = bisect.bisect_left(starts, start)
            if (at > 0 and kept[at - 1][1] > start) or (at < len(kept) and kept[at][0] < end):
                continue  # overlaps a value an earlier recognizer claimed
            starts.insert(at, start)
            kept.insert(at, (start, end, entity))
    return kept


def placeholder(entity: str, style: str) -> str:
    return f"<{entity}>" if style == "type" else "<REDACTED>"


def redact_text(text: str, entities: Sequence[str] = ENTITIES, style: str = "type") -> tuple[str, Counter]:
    """`text` with every value of `entities` replaced by its placeholder, and how many of each were."""
    found = find_pii(text, entities)
    if not found:
        return text, Counter()
    pieces, last = [], 0
    for start, end, entity in found:
        pieces += [text[last:start], placeholder(entity, style)]
        last = end
    pieces.append(text[last:])
    return "".join(pieces), Counter(entity for _, _, entity in found)


def redact_sample(sample: str | Conversation | LabelledText, entities: Sequence[str],
                  style: str) -> tuple[str | Conversation | LabelledText, Counter]:
    """A text, a conversation with every message's content, or a labelled text (its label kept), redacted."""
    if isinstance(sample, str):
        return redact_text(sample, entities, style)
    if isinstance(sample, LabelledText):
        text, counts = redact_text(sample.text, entities, style)
        return LabelledText(text, sample.label), counts
    counts: Counter = Counter()
    messages = []
    for message in sample.messages:
        content, found = redact_text(message.content, entities, style)
        counts += found
        messages.append(Message(message.role, content))
    return Conversation(tuple(messages), sample.source), counts


def redact_samples(samples: Iterable, entities: Sequence[str] = ENTITIES, style: str = "type") -> tuple[list, Counter]:
    """Every sample redacted, in order, and the counts summed over them."""
    counts: Counter = Counter()
    out = []
    for sample in samples:
        redacted, found = redact_sample(sample, entities, style)
        counts += found
        out.append(redacted)
    return out, counts


def is_redaction_on(settings: RedactionSettings, source: str) -> bool:
    """redaction.enabled: "on", "off", or "auto" (on for a user's folder, off for the embedded plays)."""
    return settings.enabled == "on" or (settings.enabled == "auto" and source == "folder")


def counts_dict(counts: Counter) -> dict[str, int]:
    """Every entity of ENTITIES with its count (0 when none), in that order: the same keys every time."""
    return {entity: int(counts.get(entity, 0)) for entity in ENTITIES}


def describe_counts(counts: Counter) -> str:
    """'12 values replaced (EMAIL 3, PHONE 9)': counts only, never values."""
    total = sum(counts.values())
    parts = ", ".join(f"{entity} {counts[entity]}" for entity in ENTITIES if counts.get(entity))
    return f"{total} values replaced" + (f" ({parts})" if parts else "")


def redact_federation(dataset: FederatedDataset, settings: RedactionSettings, *, source: str) -> FederatedDataset:
    """Every client's train and test samples redacted when redaction is on for `source`; the counts logged."""
    if not is_redaction_on(settings, source):
        return dataset
    total: Counter = Counter()
    clients = []
    for client in dataset.clients:
        train, train_counts = redact_samples(client.train, settings.entities, settings.placeholder)
        test, test_counts = redact_samples(client.test, settings.entities, settings.placeholder)
        total += train_counts + test_counts
        clients.append(ClientData(client.client_id, tuple(train), tuple(test)))
    log.info("redaction: %s in %d clients' samples", describe_counts(total), len(clients))
    return FederatedDataset(dataset.name, tuple(clients))


def redact_client(samples: Sequence, settings: RedactionSettings) -> list:
    """One client's own samples (`fedlm join --data`: the user's files, so "auto" is on), redacted; the counts logged."""
    if not is_redaction_on(settings, "folder"):
        return list(samples)
    redacted, counts = redact_samples(samples, settings.entities, settings.placeholder)
    log.info("redaction: %s in this client's %d samples", describe_counts(counts), len(redacted))
    return redacted


def sample_texts(sample: str | Conversation | LabelledText) -> Iterator[str]:
    if isinstance(sample, str):
        yield sample
    elif isinstance(sample, LabelledText):
        yield sample.text
    else:
        yield from (message.content for message in sample.messages)


def placeholder_counts(samples: Iterable[str | Conversation | LabelledText]) -> Counter:
    """How many placeholders of each type `samples` hold (after redaction: the values replaced, plus any
    placeholder the files already held)."""
    counts: Counter = Counter()
    for sample in samples:
        for text in sample_texts(sample):
            if "<" in text:
                counts.update(match.group(1) for match in _PLACEHOLDER.finditer(text))
    return counts


def count_placeholders(dataset: FederatedDataset) -> dict[str, int]:
    """Placeholders per type over every client's train and test samples (for summary.json), zero types left out."""
    counts: Counter = Counter()
    for client in dataset.clients:
        counts += placeholder_counts((*client.train, *client.test))
    return dict(sorted(counts.items()))


def redacted_per_client(dataset: FederatedDataset, config: RunConfig) -> dict[str, int]:
    """Each client's placeholders in its training samples (the `redacted` client metric), or {} when redaction is off."""
    if not is_redaction_on(config.redaction, config.data.source):
        return {}
    return {client.client_id: sum(placeholder_counts(client.train).values()) for client in dataset.clients}


def redaction_summary(dataset: FederatedDataset, config: RunConfig) -> dict[str, int] | None:
    """summary.json's "redaction": placeholders per type in the run's samples, or None when redaction is off."""
    if not is_redaction_on(config.redaction, config.data.source) or config.privacy.enabled:
        return None  # under DP the counts (un-noised, computed from the clients' text) are not released
    return count_placeholders(dataset)
