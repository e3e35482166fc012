"""SecAgg messages as JSON: bytes as base64, every length checked before a message is built.

The coordinator parses client bodies (and its own message log, on replay) with the same
functions, so a message that was accepted once is read back identically. The worker
parses the coordinator's answers with the `*_from_answer` functions. A body that is not
well formed raises MalformedMessage: bad base64, a wrong byte count, a wrong type.

An advert carries the client's certificate as PEM text (`certificate`) and its ECDSA
signature (base64); a confirmation carries its signature on the survivor sets; an unmask
request carries the neighbours' confirmations. The codec only checks their form; whether
they verify is for the protocol (secagg.identity, secagg.client).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fedlm.secagg import keys, shamir
from fedlm.secagg.encoding import FixedPoint
from fedlm.secagg.identity import MAX_CREDENTIAL_BYTES, MAX_SIGNATURE_BYTES
from fedlm.secagg.messages import (
    KeysAdvert, NeighbourKeys, RoundParameters, SealedShares, SharesForYou, SurvivorSets, SurvivorsSignature,
    UnmaskRequest, UnmaskShares,
)

GCM_TAG_BYTES = 16
SEALED_BOX_BYTES = keys.NONCE_BYTES + 2 * shamir.SHARE_BYTES + GCM_TAG_BYTES  # nonce | seed share | key share | tag
COMMITMENT_BYTES = 32  # SHA-256
MAX_PEERS = 4096  # more entries than any cohort has


class MalformedMessage(ValueError):
    """A SecAgg body that is not well formed (base64, byte counts, types)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, *, size: int, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > 4 * (size // 3 + 1):
        raise MalformedMessage(f"{what} must be base64 of {size} bytes")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedMessage(f"{what} is not valid base64") from None
    if len(data) != size:
        raise MalformedMessage(f"{what} must be {size} bytes, got {len(data)}")
    return data


def signature_from(text: Any, *, what: str) -> bytes:
    """A signature: base64 of 1 to MAX_SIGNATURE_BYTES bytes."""
    if not isinstance(text, str) or not 0 < len(text) <= 4 * (MAX_SIGNATURE_BYTES // 3 + 1):
        raise MalformedMessage(f"{what} must be base64 of at most {MAX_SIGNATURE_BYTES} bytes")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedMessage(f"{what} is not valid base64") from None
    if not 0 < len(data) <= MAX_SIGNATURE_BYTES:
        raise MalformedMessage(f"{what} must be 1 to {MAX_SIGNATURE_BYTES} bytes, got {len(data)}")
    return data


def certificate_from(text: Any) -> bytes:
    """A certificate in PEM: ASCII text of at most MAX_CREDENTIAL_BYTES (its contents are the verifier's to judge)."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_CREDENTIAL_BYTES or not text.isascii():
        raise MalformedMessage(f"certificate must be PEM text of at most {MAX_CREDENTIAL_BYTES} characters")
    return text.encode("ascii")


def _table(body: dict[str, Any], key: str, *, size: int, what: str) -> dict[str, bytes]:
    table = body.get(key)
    if not isinstance(table, dict) or len(table) > MAX_PEERS or not all(isinstance(k, str) for k in table):
        raise MalformedMessage(f"{key} must be an object of client id -> base64 {what}")
    return {peer: unb64(value, size=size, what=f"{what} for {peer[:64]!r}") for peer, value in table.items()}


# ---- client -> coordinator (and the coordinator's log) ----------------------------------
def advert_body(message: KeysAdvert) -> dict[str, str]:
    return {"cipher_public": b64(message.cipher_public), "mask_public": b64(message.mask_public),
            "certificate": message.credential.decode("ascii"), "signature": b64(message.signature)}


def advert_from(client: str, round: int, body: dict[str, Any]) -> KeysAdvert:
    size = keys.PUBLIC_KEY_BYTES
    return KeysAdvert(client, round, unb64(body.get("cipher_public"), size=size, what="cipher_public"),
                      unb64(body.get("mask_public"), size=size, what="mask_public"),
                      certificate_from(body.get("certificate")), signature_from(body.get("signature"), what="signature"))


def confirm_body(message: SurvivorsSignature) -> dict[str, str]:
    return {"signature": b64(message.signature)}


def confirm_from(client: str, round: int, body: dict[str, Any]) -> SurvivorsSignature:
    return SurvivorsSignature(client, round, signature_from(body.get("signature"), what="signature"))


def shares_body(message: SealedShares) -> dict[str, Any]:
    return {"sealed": {peer: b64(box) for peer, box in message.sealed.items()},
            "seed_commitment": b64(message.seed_commitment)}


def shares_from(client: str, round: int, body: dict[str, Any]) -> SealedShares:
    sealed = _table(body, "sealed", size=SEALED_BOX_BYTES, what="sealed box")
    return SealedShares(client, round, sealed, unb64(body.get("seed_commitment"), size=COMMITMENT_BYTES, what="seed_commitment"))


def unmask_body(message: UnmaskShares) -> dict[str, Any]:
    return {"seed_shares": {c: b64(s) for c, s in message.seed_shares.items()},
            "key_shares": {c: b64(s) for c, s in message.key_shares.items()}}


def unmask_from(client: str, round: int, body: dict[str, Any]) -> UnmaskShares:
    size = shamir.SHARE_BYTES
    return UnmaskShares(client, round, _table(body, "seed_shares", size=size, what="share"),
                        _table(body, "key_shares", size=size, what="share"))


# ---- coordinator -> client ----------------------------------------------------------------
def parameters_answer(params: RoundParameters) -> dict[str, Any]:
    return {"cohort": list(params.cohort), "neighbours": list(params.neighbours), "threshold": params.threshold,
            "size": params.size, "bound": params.encoding.bound, "clients": params.encoding.clients,
            "step": params.encoding.step}


def parameters_from_answer(round: int, answer: dict[str, Any]) -> RoundParameters:
    try:
        encoding = FixedPoint(float(answer["bound"]), int(answer["clients"]), float(answer.get("step", 0.0)))
        return RoundParameters(round, tuple(answer["cohort"]), tuple(answer["neighbours"]), int(answer["threshold"]),
                               int(answer["size"]), encoding)
    except (KeyError, TypeError, ValueError) as err:
        raise MalformedMessage(f"the task's SecAgg parameters are malformed: {err}") from None


def _round_of(answer: dict[str, Any]) -> int:
    round = answer.get("round")
    if not isinstance(round, int) or isinstance(round, bool):
        raise MalformedMessage("round must be an integer")
    return round


def neighbour_keys_answer(message: NeighbourKeys) -> dict[str, Any]:
    return {"round": message.round, "keys": {p: advert_body(a) for p, a in message.adverts.items()}}


def neighbour_keys_from_answer(answer: dict[str, Any]) -> NeighbourKeys:
    """The neighbours' adverts as they signed them, each for the answer's round (the client checks that round)."""
    table, round = answer.get("keys"), _round_of(answer)
    if not isinstance(table, dict) or len(table) > MAX_PEERS:
        raise MalformedMessage("keys must be an object of neighbour id -> advert")
    adverts = {peer: advert_from(peer, round, body if isinstance(body, dict) else {}) for peer, body in table.items()}
    return NeighbourKeys(round, adverts)


def shares_for_answer(message: SharesForYou) -> dict[str, Any]:
    return {"round": message.round, "sealed": {sender: b64(box) for sender, box in message.sealed.items()}}


def shares_for_from_answer(answer: dict[str, Any]) -> SharesForYou:
    return SharesForYou(int(answer.get("round", -1)), _table(answer, "sealed", size=SEALED_BOX_BYTES, what="sealed box"))


def survivor_sets_answer(message: SurvivorSets) -> dict[str, Any]:
    return {"round": message.round, "survivors": list(message.survivors), "dropped": list(message.dropped)}


def _client_list(answer: dict[str, Any], key: str) -> tuple[str, ...]:
    value = answer.get(key)
    if not isinstance(value, list) or len(value) > MAX_PEERS or not all(isinstance(c, str) for c in value):
        raise MalformedMessage(f"{key} must be a list of client ids")
    return tuple(value)


def survivor_sets_from_answer(answer: dict[str, Any]) -> SurvivorSets:
    return SurvivorSets(_round_of(answer), _client_list(answer, "survivors"), _client_list(answer, "dropped"))


def unmask_request_answer(message: UnmaskRequest) -> dict[str, Any]:
    return {**survivor_sets_answer(SurvivorSets(message.round, message.survivors, message.dropped)),
            "signatures": {peer: b64(s) for peer, s in message.signatures.items()}}


def unmask_request_from_answer(answer: dict[str, Any]) -> UnmaskRequest:
    sets = survivor_sets_from_answer(answer)
    table = answer.get("signatures")
    if not isinstance(table, dict) or len(table) > MAX_PEERS or not all(isinstance(k, str) for k in table):
        raise MalformedMessage("signatures must be an object of client id -> base64 signature")
    signatures = {peer: signature_from(s, what=f"signature of {peer[:64]!r}") for peer, s in table.items()}
    return UnmaskRequest(sets.round, sets.survivors, sets.dropped, signatures)
