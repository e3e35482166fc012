"""PII redaction: worked examples per entity type, values that must stay, exact counts, and the run's data loading."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fedlm.config import REDACTION_ENTITIES, ConfigError, RunConfig, apply_overrides, config_from_dict
from fedlm.data.conversations import make_conversation
from fedlm.data.redaction import (
    ENTITIES,
    FINDERS,
    count_placeholders,
    describe_counts,
    is_redaction_on,
    redact_sample,
    redact_text,
    redaction_summary,
)
from fedlm.data.types import ClientData, FederatedDataset
from fedlm.work import make_work

REDACTED = [  # (text, what it becomes): valid values of each type
    ("mail ana.lopez@example.org now", "mail <EMAIL> now"),
    ("call +44 20 7946 0958 today", "call <PHONE> today"),
    ("call (415) 555-0132 x12 today", "call <PHONE> today"),
    ("Tel. 030 12345678.", "Tel. <PHONE>."),
    ("IBAN DE89 3704 0044 0532 0130 00 paid", "IBAN <IBAN> paid"),
    ("IBAN GB82WEST12345698765432 paid", "IBAN <IBAN> paid"),
    ("card 4111 1111 1111 1111 paid", "card <CREDIT_CARD> paid"),
    ("card 5500-0000-0000-0004 paid", "card <CREDIT_CARD> paid"),
    ("from 192.168.1.20 and fe80::1ff:fe23:4567:890a.", "from <IP_ADDRESS> and <IP_ADDRESS>."),
    ("SSN 536-22-8726 on file", "SSN <US_SSN> on file"),
    ("NIR 189084809508621 ok", "NIR <NATIONAL_ID> ok"),
    ("Steuer-ID 86095742719 ok", "Steuer-ID <NATIONAL_ID> ok"),
    ("NINO AB 12 34 56 C ok", "NINO <NATIONAL_ID> ok"),
    ("born on 12/03/1985, seen", "born on <DATE_OF_BIRTH>, seen"),
    ("geboren am 12. März 1985.", "geboren am <DATE_OF_BIRTH>."),
    ("seen on 2021-04-05 and March 3, 2022.", "seen on <DATE> and <DATE>."),
    ("MRN: 00482913 noted", "MRN: <RECORD_ID> noted"),
    ("Patient ID AB-123456 noted", "Patient ID <RECORD_ID> noted"),
    ("Ask Maria Okafor now.", "Ask <PERSON> now."),
    ("Dr. Okonkwo and Mme Dubois", "<PERSON> and <PERSON>"),
    ("Frau Anna Müller-Schmidt kam.", "<PERSON> kam."),
]

KEPT = [  # values that look like PII and are not
    "card 4111 1111 1111 1112 declined",  # Luhn check fails
    "IBAN DE89 3704 0044 0532 0130 01 refused",  # mod-97 check fails
    "version 3.2.1 released",  # a version is not a phone
    "released in 1999, again in 2004",  # a year is not a date of birth
    "ratio 12/45 and room 301",  # no date, no phone
    "the meeting at 10:30:45 ran late",  # a time is not an IPv6 address
    "Smith said so.",  # a surname alone is not covered
    "ROMEO. But soft, what light through yonder window breaks?",  # upper-case speaker labels
    "Will you come to church on Monday?",  # a first name that is a verb, followed by no name
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_each_entity_type_is_replaced_by_its_placeholder(text, expected):
    redacted, counts = redact_text(text)
    assert redacted == expected
    assert sum(counts.values()) == expected.count("<")


@pytest.mark.parametrize("text", KEPT)
def test_look_alikes_are_left_alone(text):
    assert redact_text(text) == (text, Counter())


def test_counts_are_exact_per_type_and_the_report_holds_no_value():
    text = ("Maria Okafor (ana@x.org, ana@y.org) paid with 4111 1111 1111 1111; "
            "SSN 536-22-8726, born 1985-03-12.")
    redacted, counts = redact_text(text)
    assert counts == Counter({"EMAIL": 2, "PERSON": 1, "CREDIT_CARD": 1, "US_SSN": 1, "DATE_OF_BIRTH": 1})
    assert describe_counts(counts) == "6 values replaced (EMAIL 2, US_SSN 1, CREDIT_CARD 1, DATE_OF_BIRTH 1, PERSON 1)"
    for value in ("Okafor", "ana@", "4111", "536-22", "1985"):
        assert value not in redacted


def test_only_the_chosen_entities_are_replaced_and_the_generic_placeholder():
    text = "mail ana@x.org or call +44 20 7946 0958"
    assert redact_text(text, ("PHONE",)) == ("mail ana@x.org or call <PHONE>", Counter({"PHONE": 1}))
    assert redact_text(text, ENTITIES, "redacted")[0] == "mail <REDACTED> or call <REDACTED>"


def test_an_ssn_that_is_never_issued_is_no_ssn():
    assert "US_SSN" not in redact_text("SSN 666-22-8726", ("US_SSN",))[1]  # area 666 is never issued


def test_a_card_number_is_claimed_once_not_also_as_a_phone():
    assert redact_text("4111111111111111")[1] == Counter({"CREDIT_CARD": 1})


def test_every_configured_entity_has_a_recognizer_in_claiming_order():
    assert set().union(*(reports for _, reports in FINDERS)) == set(REDACTION_ENTITIES) == set(ENTITIES)
    order = [entity for entity in ENTITIES for _, reports in FINDERS if entity in reports]
    assert [min(order.index(e) for e in reports) for _, reports in FINDERS] == sorted(
        min(order.index(e) for e in reports) for _, reports in FINDERS)


def test_a_conversation_has_every_message_redacted_and_keeps_its_source():
    conversation = make_conversation([("user", "I am Maria Okafor"), ("assistant", "Mail ana@x.org")], "a.jsonl, line 3")
    redacted, counts = redact_sample(conversation, ENTITIES, "type")
    assert [m.content for m in redacted.messages] == ["I am <PERSON>", "Mail <EMAIL>"]
    assert redacted.source == "a.jsonl, line 3" and counts == Counter({"PERSON": 1, "EMAIL": 1})


def test_settings_are_checked_with_their_names():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"redaction": {"enabled": "yes", "entities": ["EMAIL", "SECRET"], "placeholder": "x"}})
    message = str(error.value)
    assert "redaction.enabled" in message and "redaction.entities" in message and "SECRET" in message
    assert "redaction.placeholder" in message


def test_auto_is_on_for_folders_and_off_for_the_plays():
    config = RunConfig()
    assert config.redaction.enabled == "auto" and config.redaction.entities == REDACTION_ENTITIES
    assert is_redaction_on(config.redaction, "folder") and not is_redaction_on(config.redaction, "shakespeare")
    off = apply_overrides(config, {"redaction": {"enabled": "off"}})
    assert not is_redaction_on(off.redaction, "folder")
    dataset = FederatedDataset("toy", (ClientData("a", ("mail <EMAIL>",), ()),))
    assert redaction_summary(dataset, config) is None  # the plays: off, no figure
    assert count_placeholders(dataset) == {"EMAIL": 1}


def write_sites(root, text_by_site: dict[str, str]) -> None:
    for site, text in text_by_site.items():
        (root / site).mkdir(parents=True)
        (root / site / "notes.txt").write_text(text, encoding="utf-8")


def folder_config(path, **redaction) -> RunConfig:
    overrides = {"model": {"name": "tiny"}, "data": {"source": "folder", "path": str(path), "test_fraction": 0.5}}
    if redaction:
        overrides["redaction"] = redaction
    return apply_overrides(RunConfig(), overrides)


def test_a_folder_federation_is_redacted_before_tokenization_by_default(tmp_path):
    # Prepare: two sites, an e-mail planted in every paragraph of one
    paragraphs = "\n\n".join(f"note {i}: write to jane.roe@example.org about the ward." for i in range(6))
    write_sites(tmp_path / "sites", {"a": paragraphs, "b": "\n\n".join(f"plain note {i}." for i in range(6))})
    from fedlm.sim.setup import prepare

    # Execute
    sim = prepare(folder_config(tmp_path / "sites"))
    # Assert: no sample, no decoded training block holds the address; the placeholder does
    samples = [s for c in sim.dataset.clients for s in (*c.train, *c.test)]
    assert not any("jane.roe" in s for s in samples) and sum("<EMAIL>" in s for s in samples) == 6
    tokenizer = sim.base.tokenizer
    decoded = "".join(tokenizer.decode(row) for c in ("a", "b") for row in sim.train_blocks(c).input_ids.tolist())
    assert "jane.roe" not in decoded and "example.org" not in decoded
    assert redaction_summary(sim.dataset, sim.config) == {"EMAIL": 6}


def test_redaction_off_leaves_the_folder_as_written(tmp_path):
    write_sites(tmp_path / "sites", {"a": "write to jane.roe@example.org\n\nsecond", "b": "plain\n\nmore"})
    dataset = make_work(folder_config(tmp_path / "sites", enabled="off")).load_federation()
    assert any("jane.roe@example.org" in s for c in dataset.clients for s in (*c.train, *c.test))


def test_join_reads_its_client_redacted_text_and_instruction(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("call +44 20 7946 0958\n\nplain", encoding="utf-8")
    assert make_work(RunConfig()).read_client(tmp_path / "mine") == ["call <PHONE>", "plain"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "I am Maria Okafor"},
                                             {"role": "assistant", "content": "Hello"}]}) + "\n", encoding="utf-8")
    config = apply_overrides(RunConfig(), {"task": {"kind": "instruction"}})
    [conversation] = make_work(config).read_client(chat)
    assert conversation.messages[0].content == "I am <PERSON>"
