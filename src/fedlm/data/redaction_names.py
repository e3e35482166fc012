"""Person names by dictionary: a known first name followed by a capitalized word, or a title and a capitalized word.

No model is fetched at run time, so names come from the per-locale first- and last-name
lists that Faker ships (faker.providers.person.<locale>, NAME_LOCALES). A run of
capitalized words on one line is searched for a known first name followed by another
capitalized word ("Maria Okafor", "Jean-Luc de la Fontaine"); the span runs on over
further words that are known first or last names. A title ("Dr.", "Mrs", "Herr", "Mme")
followed by a capitalized word is a name whatever the word ("Dr. Okonkwo").

Not covered (say so in the README): a surname alone ("Smith said"), a first name alone
("ask Maria"), names written in lower or upper case, "Surname, First" order, first names
missing from the lists (measured in benchmarks/redaction.py on a locale left out of them),
and scripts other than Latin. Capitalized words after a common first name that are no
surname ("Will Power", "Grace Church") are false positives.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterator

from fedlm.data.redaction_patterns import Found

NAME_LOCALES = ("en_US", "en_GB", "en_IE", "de_DE", "de_AT", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_PT")
TITLES = ("Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Sir", "Dame", "Herr", "Frau", "Monsieur", "Madame", "Mme",
          "Mlle", "Dott", "Sig", "Sra", "Sr")
PARTICLES = ("von", "van", "de", "del", "della", "der", "den", "di", "da", "du", "des", "le", "la", "zu", "zum", "ten",
             "ter", "vom", "dos", "das")
NOT_SURNAMES = frozenset((  # capitalized words that follow a first name and are no surname
    "January February March April May June July August September October November December Monday Tuesday "
    "Wednesday Thursday Friday Saturday Sunday I The And But Or If Then So To Of In On At By For With From As Is "
    "Street Road Avenue Lane Hospital Clinic Church School University Bank Company Inc Ltd GmbH "
    "Duke Earl Lord Lady King Queen Prince Princess Count Countess Saint"
).split())

_UPPER = "".join(re.escape(c) for c in map(chr, range(0x41, 0x250)) if c.isupper() and c.isalpha())
_LETTER = r"(?:[^\W\d_]|['’])"
_WORD = rf"[{_UPPER}]{_LETTER}+(?:-[{_UPPER}]{_LETTER}+)*"
_GAP = rf"[ \t]+(?:(?:{'|'.join(PARTICLES)})[ \t]+)*"
_TITLE = rf"(?:{'|'.join(TITLES)})\.?"
_RUN = re.compile(rf"(?<![\w.])(?:({_TITLE})[ \t]+)?({_WORD}(?:{_GAP}{_WORD})*)(?![\w])")
_RUN_WORD = re.compile(_WORD)


def provider_names(locale: str) -> tuple[set[str], set[str]]:
    """(first names, last names) of one Faker locale's person provider."""
    provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
    first = set(getattr(provider, "first_names", ()))
    last = set(getattr(provider, "last_names", ()))
    return first, last


@functools.cache
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, last names) of every NAME_LOCALES locale; each multi-word or hyphenated name also by its parts."""
    first: set[str] = set()
    last: set[str] = set()
    for locale in NAME_LOCALES:
        more_first, more_last = provider_names(locale)
        first |= more_first
        last |= more_last
    for names in (first, last):
        names |= {part for name in list(names) for part in re.split(r"[ -]", name) if part[:1].isupper()}
    return frozenset(first - NOT_SURNAMES), frozenset(last - NOT_SURNAMES)


def is_name_word(word: str, names: frozenset[str]) -> bool:
    return word in names or all(part in names for part in word.split("-"))


def is_surname(word: str) -> bool:
    """Any capitalized word may be a surname after a first name, but for a few common ones and upper-case words."""
    return not word.isupper() and word not in NOT_SURNAMES


def name_span(words: list[re.Match], first: frozenset[str], last: frozenset[str]) -> tuple[int, int] | None:
    """(index of the first word, index past the last) of the first name in a run of capitalized words, if any."""
    for i, word in enumerate(words[:-1]):
        text = word.group()
        if text.isupper() or not is_name_word(text, first):
            continue
        if not is_surname(words[i + 1].group()):
            continue
        return i, extend_name(words, i + 2, first, last)
    return None


def extend_name(words: list[re.Match], end: int, first: frozenset[str], last: frozenset[str]) -> int:
    """The index past the words from `end` on that are known first or last names (a name's further parts)."""
    while end < len(words) and (is_name_word(words[end].group(), last) or is_name_word(words[end].group(), first)):
        end += 1
    return end


def find_persons(text: str) -> Iterator[Found]:
    first, last = name_lists()
    for match in _RUN.finditer(text):
        start = match.start(2)
        words = list(_RUN_WORD.finditer(text, start, match.end(2)))
        if match.group(1) and not words[0].group().isupper() and words[0].group() not in NOT_SURNAMES:
            end = 2 if len(words) > 1 and is_name_word(words[0].group(), first) and is_surname(words[1].group()) else 1
            end = extend_name(words, end, first, last)
            yield match.start(1), words[end - 1].end(), "PERSON"
            words = words[end:]
        while words:
            span = name_span(words, first, last)
            if span is None:
                break
            yield words[span[0]].start(), words[span[1] - 1].end(), "PERSON"
            words = words[span[1]:]
