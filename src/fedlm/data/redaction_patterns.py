"""Recognizers for structured PII: a regular expression finds candidates, a checksum or a numbering plan keeps them.

Each recognizer is a function `text -> iterator of (start, end, entity)`. Validation comes
from libraries: python-stdnum (IBAN per-country length and ISO 7064 check, Luhn, US SSN
rules, French NIR key, German tax id), phonenumbers (Google's libphonenumber numbering
plans) and the standard library's ipaddress and datetime. The candidate patterns are ours:
those are a few lines each, and the libraries' own finders are either slow
(phonenumbers.PhoneNumberMatcher) or absent (stdnum validates, it does not search).

What is covered, and what is not (say it in the README):
- EMAIL: local@domain.tld.
- PHONE: 7-15 digits in phone-shaped groups, with an extension ("x123", "ext. 12"); kept
  when libphonenumber calls it possible in one of PHONE_REGIONS, when it starts like a dialled
  number ("+", "00", "0", "(") or, bare digits, when it is a valid number of one of those regions.
- CREDIT_CARD: 13-19 digits (spaces or dashes between), Luhn-valid, issuer digit 1-6.
- IBAN: upper-case, grouped or not, valid per stdnum (country length and mod-97 check).
- IP_ADDRESS: IPv4 (a four-part version number "1.2.3.4" reads as one) and IPv6.
- US_SSN: ddd-dd-dddd (or spaces) passing the SSA's rules (no 000, 666, 9xx area).
- NATIONAL_ID: French NIR (15 digits with its key), German tax id (11 digits, check digit),
  UK National Insurance number (two letters, six digits, A-D). Not: NHS numbers, passports,
  driving licences, other countries' ids.
- DATE_OF_BIRTH / DATE: a full date (day, month and year; numeric, ISO or with an English,
  German or French month name); DATE_OF_BIRTH when a birth word ("born", "DOB", "geboren",
  "né") comes shortly before. A year alone, or a day and month without year, is no date.
- RECORD_ID: an identifier with at least 4 digits right after a record keyword ("MRN",
  "patient ID", "case number", "account no.", "Aktenzeichen", "numéro de dossier"...).
  Without a keyword, a record number is not recognised.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterator

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.de import idnr
from stdnum.fr import nir
from stdnum.us import ssn

Found = tuple[int, int, str]  # (start, end, entity) of one recognised value

PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CH", "AT", "BE", "CA", "AU", "IE")

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){11,18}(?![\d-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)[0-9A-Fa-f:]{2,39}(?![\w:])")
_SSN = re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])")
_NIR = re.compile(r"(?<![\w])[12](?: ?[\dAB]){12}(?: ?\d{2})(?!\w)")  # 2A, 2B: Corsica
_TAX_ID = re.compile(r"(?<![\w])\d{2} ?\d{3} ?\d{3} ?\d{3}(?!\w)")
_NINO = re.compile(r"(?<![\w])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
                   r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)")
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d[\d ().\-/]{5,22}\d(?: ?(?:x|ext\.?|extension) ?\d{1,5})?(?![\w])")
_EXTENSION = re.compile(r" ?(?:x|ext\.?|extension) ?\d{1,5}$")
_PHONE_SEPARATORS = re.compile(r"[ ().\-/]+")

_MONTHS = {
    **dict.fromkeys(("january", "jan", "januar", "jänner", "janvier", "janv"), 1),
    **dict.fromkeys(("february", "feb", "februar", "février", "fevrier", "févr", "fév"), 2),
    **dict.fromkeys(("march", "mar", "märz", "maerz", "mars"), 3),
    **dict.fromkeys(("april", "apr", "avril", "avr"), 4),
    **dict.fromkeys(("may", "mai"), 5),
    **dict.fromkeys(("june", "jun", "juni", "juin"), 6),
    **dict.fromkeys(("july", "jul", "juli", "juillet", "juil"), 7),
    **dict.fromkeys(("august", "aug", "août", "aout"), 8),
    **dict.fromkeys(("september", "sep", "sept", "septembre"), 9),
    **dict.fromkeys(("october", "oct", "oktober", "okt", "octobre"), 10),
    **dict.fromkeys(("november", "nov", "novembre"), 11),
    **dict.fromkeys(("december", "dec", "dezember", "dez", "décembre", "déc"), 12),
}
_MONTH = "(?:" + "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True)) + r")\.?"
_NUMERIC_DATE = re.compile(r"(?<![\d./-])(\d{1,2})([./-])(\d{1,2})\2(\d{4}|\d{2})(?![\d]|[./-]\d)")
_ISO_DATE = re.compile(r"(?<![\d./-])(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?![\d]|[./-]\d)")
_DAY_MONTH_YEAR = re.compile(rf"(?<!\w)(\d{{1,2}})(?:st|nd|rd|th|er|\.)?\s+({_MONTH})\s+(\d{{4}})(?!\d)", re.IGNORECASE)
_MONTH_DAY_YEAR = re.compile(rf"(?<!\w)({_MONTH})\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})(?!\d)", re.IGNORECASE)
_BIRTH_WORDS = re.compile(r"(?:born|birth|d\.?o\.?b|geb\.|geboren|geburt|né|née|naissance)\W*(?:\w+\W+){0,3}$",
                          re.IGNORECASE)
_RECORD = re.compile(
    r"(?<!\w)(?:MRN|medical record(?: number| no\.?)?|record (?:number|no\.?|#|id)|patient (?:id|number|no\.?|#)"
    r"|case (?:number|no\.?|id|#)|account (?:number|no\.?|#)|chart (?:number|no\.?)|member (?:id|number)"
    r"|policy (?:number|no\.?)|aktenzeichen|patienten-?(?:nummer|nr\.?)|fallnummer|versichertennummer"
    r"|kundennummer|num[ée]ro de dossier|n° de dossier|dossier n°|num[ée]ro de patient)"
    r"\s*(?:#|:|no\.?|nr\.?|n°)?\s*([A-Z]{0,4}[-/ ]?\d[\dA-Z/-]*\d|\d{4,})", re.IGNORECASE)


def find_emails(text: str) -> Iterator[Found]:
    for match in _EMAIL.finditer(text):
        yield match.start(), match.end(), "EMAIL"


_MAESTRO = ("50", "56", "57", "58", "6", "0604")  # Maestro numbers may be 12 digits long


def is_card_number(digits: str) -> bool:
    """Luhn-valid, 13-19 digits beginning with an issuer's digit (1 JCB, 2-5 Mastercard/Visa/Amex, 6 Discover),
    or 12 with a Maestro prefix."""
    issuer = 13 <= len(digits) <= 19 and digits[0] in "123456" or 12 <= len(digits) <= 19 and digits.startswith(_MAESTRO)
    return issuer and luhn.is_valid(digits)


def find_cards(text: str) -> Iterator[Found]:
    for match in _CARD.finditer(text):
        if is_card_number(re.sub(r"[ -]", "", match.group())):
            yield match.start(), match.end(), "CREDIT_CARD"


def find_ibans(text: str) -> Iterator[Found]:
    """The longest prefix of each candidate that is a valid IBAN (the pattern may run on into a following word)."""
    for match in _IBAN.finditer(text):
        positions = [match.start() + i for i, char in enumerate(match.group()) if char != " "]
        compact = match.group().replace(" ", "")
        for length in range(len(compact), 14, -1):
            if stdnum_iban.is_valid(compact[:length]):
                yield match.start(), positions[length - 1] + 1, "IBAN"
                break


def find_ip_addresses(text: str) -> Iterator[Found]:
    for pattern in (_IPV4, _IPV6):
        for match in pattern.finditer(text):
            try:
                ipaddress.ip_address(match.group())
            except ValueError:
                continue
            yield match.start(), match.end(), "IP_ADDRESS"


def find_us_ssns(text: str) -> Iterator[Found]:
    for match in _SSN.finditer(text):
        if ssn.is_valid(match.group().replace(" ", "-")):
            yield match.start(), match.end(), "US_SSN"


def find_national_ids(text: str) -> Iterator[Found]:
    """French NIR, German tax id (Steuer-IdNr), UK National Insurance number."""
    for pattern, valid in ((_NIR, nir.is_valid), (_TAX_ID, idnr.is_valid), (_NINO, None)):
        for match in pattern.finditer(text):
            if valid is None or valid(match.group().replace(" ", "")):
                yield match.start(), match.end(), "NATIONAL_ID"


def is_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def full_year(year: str) -> int:
    return int(year) if len(year) == 4 else 1900 + int(year) if int(year) >= 30 else 2000 + int(year)


def date_entity(text: str, start: int) -> str:
    """DATE_OF_BIRTH when a birth word stands within the few words before `start`, else DATE."""
    return "DATE_OF_BIRTH" if _BIRTH_WORDS.search(text, max(0, start - 40), start) else "DATE"


def find_dates(text: str) -> Iterator[Found]:
    """Full dates: day, month and year (either order of day and month for numeric ones, 1900-2099 for 4-digit years)."""
    for match in _NUMERIC_DATE.finditer(text):
        first, second, year = int(match.group(1)), int(match.group(3)), full_year(match.group(4))
        if 1900 <= year <= 2099 and (is_date(year, second, first) or is_date(year, first, second)):
            yield match.start(), match.end(), date_entity(text, match.start())
    for match in _ISO_DATE.finditer(text):
        year, month, day = int(match.group(1)), int(match.group(3)), int(match.group(4))
        if 1900 <= year <= 2099 and is_date(year, month, day):
            yield match.start(), match.end(), date_entity(text, match.start())
    for pattern, day_group, month_group in ((_DAY_MONTH_YEAR, 1, 2), (_MONTH_DAY_YEAR, 2, 1)):
        for match in pattern.finditer(text):
            month = _MONTHS[match.group(month_group).rstrip(".").lower()]
            if is_date(int(match.group(3)), month, int(match.group(day_group))):
                yield match.start(), match.end(), date_entity(text, match.start())


def find_record_ids(text: str) -> Iterator[Found]:
    """The identifier after a record keyword (the keyword stays), when it holds at least 4 digits."""
    for match in _RECORD.finditer(text):
        if sum(char.isdigit() for char in match.group(1)) >= 4:
            yield match.start(1), match.end(1), "RECORD_ID"


def is_phone_number(candidate: str) -> bool:
    digits = sum(char.isdigit() for char in _EXTENSION.sub("", candidate))
    if not 7 <= digits <= 15:
        return False
    dialled = candidate.startswith(("+", "0", "("))  # an international or trunk prefix, or an area code in brackets
    valid = possible = False
    for region in PHONE_REGIONS:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        possible = possible or phonenumbers.is_possible_number(number)
        if phonenumbers.is_valid_number(number):
            valid = True
            break
    separated = len(_PHONE_SEPARATORS.findall(candidate)) >= 2 and "." not in candidate
    return valid or (possible and (dialled or separated)) or (dialled and digits >= 8)


def find_phones(text: str) -> Iterator[Found]:
    for match in _PHONE.finditer(text):
        candidate = match.group().rstrip(" ")
        if candidate.count("(") == candidate.count(")") and is_phone_number(candidate):
            yield match.start(), match.start() + len(candidate), "PHONE"
