"""PII redaction (fedlm.data.redaction): precision and recall per entity type, false positives and throughput.

What it measures
    1. A labelled synthetic corpus: Faker (locales en_US, en_GB, de_DE, fr_FR, seeded) plants
       names, phones, e-mails, IBANs, card numbers (valid Luhn), dates of birth and other
       dates, US SSNs, national ids (French NIR, German tax id, UK NI number), IPv4/IPv6
       addresses and record numbers into template sentences, each planted value's span
       known. A found span counts as a true positive when it overlaps a planted span of the
       same type. Per type: precision, recall, and "removed" (the share of planted values
       overlapped by a placeholder of any type: what privacy cares about).
    2. Names from locales whose name lists the dictionary does not hold (pl_PL, fi_FI,
       tr_TR, cs_CZ): the recall of person names outside the dictionary.
    3. The plays (fedlm.data.shakespeare, every speaker's verse): no real person's data, so
       every redaction is a false positive; reported per 1,000 words and by type.
    4. Throughput (MB/s of UTF-8 text) on the plays and on the corpus, beside two baselines
       measured in the same run: one compiled e-mail regex substitution (re.sub) and
       str.replace of one word over the same text.

Run: `.venv/bin/python benchmarks/redaction.py [--sentences 4000] [--seed 0] [--json]`.
Needs Faker (the benchmark only; redaction itself uses Faker's name lists too).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter

from faker import Faker
from stdnum.de import idnr
from stdnum.iso7064 import mod_11_10

from fedlm.data.redaction import ENTITIES, find_pii, redact_text

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR")
UNSEEN_LOCALES = ("pl_PL", "fi_FI", "tr_TR", "cs_CZ")  # not in fedlm.data.redaction_names.NAME_LOCALES

TEMPLATES = {  # {v}: the planted value
    "PERSON": ["Patient {v} was admitted on the ward.", "The letter was signed by {v} yesterday.",
               "Please forward this to {v} before Friday.", "We spoke with {v} about the loan."],
    "EMAIL": ["Send the report to {v} today.", "Contact: {v}", "Her address is {v}, use it sparingly."],
    "PHONE": ["Call the clinic on {v} after nine.", "Phone: {v}", "He left {v} as his number."],
    "IBAN": ["Transfer the amount to {v} by Monday.", "IBAN: {v}", "The account {v} was closed."],
    "CREDIT_CARD": ["Charged to card {v} on checkout.", "Card number: {v}", "She paid with {v} last week."],
    "DATE_OF_BIRTH": ["The patient was born on {v}.", "Date of birth: {v}", "DOB {v}, allergies none."],
    "DATE": ["The follow-up visit is on {v}.", "Admitted {v} with chest pain.", "Signed on {v} in the office."],
    "US_SSN": ["SSN {v} is on file.", "Social security number: {v}."],
    "NATIONAL_ID": ["National id {v} was checked.", "ID number: {v}", "Her insurance number is {v}."],
    "IP_ADDRESS": ["Login from {v} was blocked.", "The server at {v} answered.", "Source IP: {v}"],
    "RECORD_ID": ["See MRN {v} for details.", "Patient ID: {v}", "Case number {v} was reopened.",
                  "Account no. {v} is overdue."],
}
FILLER = ["The weather was mild.", "Results were within normal limits.", "Version 3.2.1 was installed in 2019.",
          "The meeting lasted 45 minutes.", "Nothing else to report.", "Order 12 boxes of gloves."]
_NINO_LETTERS = "ABCEGHJKLMNPRSTWXYZ"


def format_date(day, locale: str, rng: random.Random) -> str:
    months = {"de_DE": ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
                        "Oktober", "November", "Dezember"],
              "fr_FR": ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
                        "octobre", "novembre", "décembre"]}
    name = months.get(locale, [day.strftime("%B") for _ in range(1)] * 12)[day.month - 1]
    styles = {"en_US": [day.strftime("%m/%d/%Y"), f"{day.strftime('%B')} {day.day}, {day.year}", day.isoformat()],
              "en_GB": [day.strftime("%d/%m/%Y"), f"{day.day} {day.strftime('%B')} {day.year}", day.isoformat()],
              "de_DE": [day.strftime("%d.%m.%Y"), f"{day.day}. {name} {day.year}", day.isoformat()],
              "fr_FR": [day.strftime("%d/%m/%Y"), f"{day.day} {name} {day.year}", day.isoformat()]}
    return rng.choice(styles[locale])


def german_tax_id(rng: random.Random) -> str:
    while True:
        body = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(9))
        number = body + mod_11_10.calc_check_digit(body)
        if idnr.is_valid(number):
            return number


def national_id(fake: Faker, locale: str, rng: random.Random) -> str:
    if locale == "fr_FR":
        return fake.ssn()
    if locale == "de_DE":
        return german_tax_id(rng)
    prefix = rng.choice(_NINO_LETTERS) + rng.choice(_NINO_LETTERS.replace("O", ""))
    while prefix in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
        prefix = rng.choice(_NINO_LETTERS) + rng.choice(_NINO_LETTERS)
    digits = "".join(str(rng.randint(0, 9)) for _ in range(6))
    return prefix + (f" {digits[:2]} {digits[2:4]} {digits[4:]} " if rng.random() < 0.5 else digits) + rng.choice("ABCD")


def grouped(value: str, rng: random.Random) -> str:
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def plant(entity: str, fake: Faker, locale: str, rng: random.Random) -> str:
    if entity == "PERSON":
        return fake.name()
    if entity == "EMAIL":
        return fake.email()
    if entity == "PHONE":
        return fake.phone_number()
    if entity == "IBAN":
        return grouped(fake.iban(), rng)
    if entity == "CREDIT_CARD":
        return grouped(fake.credit_card_number(), rng)
    if entity == "DATE_OF_BIRTH":
        return format_date(fake.date_of_birth(minimum_age=1, maximum_age=95), locale, rng)
    if entity == "DATE":
        return format_date(fake.date_between("-5y", "+1y"), locale, rng)
    if entity == "US_SSN":
        return Faker("en_US").ssn() if locale != "en_US" else fake.ssn()
    if entity == "NATIONAL_ID":
        return national_id(fake, locale, rng)
    if entity == "IP_ADDRESS":
        return fake.ipv4() if rng.random() < 0.7 else fake.ipv6()
    return rng.choice([fake.bothify("########"), fake.bothify("??-######").upper(), fake.bothify("####-#####")])


def make_corpus(sentences: int, seed: int, locales=LOCALES, entities=tuple(TEMPLATES)) -> list[tuple[str, list]]:
    """(text, [(start, end, entity)]) documents of a few sentences, each planting one value or none."""
    rng = random.Random(seed)
    fakes = {loc: Faker(loc) for loc in locales}
    for i, fake in enumerate(fakes.values()):
        fake.seed_instance(seed * 100 + i)
    documents, text, spans = [], "", []
    for n in range(sentences):
        locale = rng.choice(locales)
        if rng.random() < 0.2:
            sentence, found = rng.choice(FILLER), None
        else:
            entity = rng.choice(entities)
            value = plant(entity, fakes[locale], locale, rng)
            template = rng.choice(TEMPLATES[entity])
            at = template.index("{v}")
            sentence = template.replace("{v}", value)
            found = (len(text) + (1 if text else 0) + at, entity, len(value))
        text = f"{text} {sentence}" if text else sentence
        if found:
            spans.append((found[0], found[0] + found[2], found[1]))
        if n % 4 == 3:
            documents.append((text, spans))
            text, spans = "", []
    if text:
        documents.append((text, spans))
    return documents


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(documents: list[tuple[str, list]]) -> dict[str, dict[str, float]]:
    gold, hit, removed, predicted, correct = Counter(), Counter(), Counter(), Counter(), Counter()
    for text, spans in documents:
        found = find_pii(text)
        for span in spans:
            gold[span[2]] += 1
            hit[span[2]] += any(overlaps(span, f) and f[2] == span[2] for f in found)
            removed[span[2]] += any(overlaps(span, f) for f in found)
        for f in found:
            predicted[f[2]] += 1
            correct[f[2]] += any(overlaps(span, f) and f[2] == span[2] for span in spans)
    return {e: {"planted": gold[e], "found": predicted[e],
                "precision": round(correct[e] / predicted[e], 4) if predicted[e] else None,
                "recall": round(hit[e] / gold[e], 4) if gold[e] else None,
                "removed": round(removed[e] / gold[e], 4) if gold[e] else None}
            for e in ENTITIES if gold[e] or predicted[e]}


def plays_text() -> str:
    from fedlm.data.shakespeare import load_shakespeare

    dataset = load_shakespeare(min_lines=1, test_fraction=0.2, seed=0)
    return "\n\n".join(s for c in dataset.clients for s in (*c.train, *c.test))


def throughput(function, text: str, repeats: int = 3) -> float:
    """MB/s of UTF-8 text, best of `repeats`."""
    size = len(text.encode()) / 1e6
    best = min(timed(function, text) for _ in range(repeats))
    return round(size / best, 3)


def timed(function, text: str) -> float:
    started = time.perf_counter()
    function(text)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    corpus = make_corpus(args.sentences, args.seed)
    per_type = score(corpus)
    unseen = score(make_corpus(args.sentences // 4, args.seed + 1, UNSEEN_LOCALES, ("PERSON",)))["PERSON"]
    plays = plays_text()
    words = len(plays.split())
    play_counts = Counter(e for _, _, e in find_pii(plays))
    email = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
    corpus_text = "\n\n".join(text for text, _ in corpus)
    report = {
        "corpus": {"documents": len(corpus), "bytes": len(corpus_text.encode()), "locales": list(LOCALES)},
        "per_type": per_type,
        "person_unseen_locales": {"locales": list(UNSEEN_LOCALES), **unseen},
        "plays": {"words": words, "redactions": sum(play_counts.values()),
                  "per_1000_words": round(1000 * sum(play_counts.values()) / words, 3), "by_type": dict(play_counts)},
        "throughput_mb_s": {
            "plays": {"redact_text": throughput(redact_text, plays), "baseline_email_re_sub": throughput(
                lambda t: email.sub("<EMAIL>", t), plays), "baseline_str_replace": throughput(
                lambda t: t.replace("love", "<X>"), plays), "mb": round(len(plays.encode()) / 1e6, 2)},
            "corpus": {"redact_text": throughput(redact_text, corpus_text), "baseline_email_re_sub": throughput(
                lambda t: email.sub("<EMAIL>", t), corpus_text)},
        },
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"corpus: {len(corpus)} documents, {report['corpus']['bytes']} bytes, locales {', '.join(LOCALES)}")
    print(f"{'type':<14} {'planted':>7} {'found':>6} {'precision':>9} {'recall':>7} {'removed':>8}")
    for entity, row in per_type.items():
        print(f"{entity:<14} {row['planted']:>7} {row['found']:>6} {row['precision']!s:>9} {row['recall']!s:>7} "
              f"{row['removed']!s:>8}")
    print(f"PERSON, names of {', '.join(UNSEEN_LOCALES)} (not in the dictionary): recall {unseen['recall']}, "
          f"precision {unseen['precision']}")
    p = report["plays"]
    print(f"plays: {p['words']} words, {p['redactions']} redactions = {p['per_1000_words']} per 1,000 words {p['by_type']}")
    print("throughput MB/s:", json.dumps(report["throughput_mb_s"]))


if __name__ == "__main__":
    main()
