"""SecAgg messages as JSON: bytes as base64, every length checked before a message is built.

The coordinator parses client bodies (and its own message log, on replay) with the same
functions, so a message that was accepted once is read back identically. The worker
parses the coordinator's answers with the `*_from_answer` functions. A body that is not
well formed raises MalformedMessage: bad base64, a wrong byte count, a wrong type.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fedlm.secagg import keys, shamir
from fedlm.secagg.encoding import FixedPoint
from fedlm.secagg.messages import (
    KeysAdvert, NeighbourKeys, RoundParameters, SealedShares, SharesForYou, UnmaskRequest, UnmaskShares,
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


def _table(body: dict[str, Any], key: str, *, size: int, what: str) -> dict[str, bytes]:
    table = body.get(key)
    if not isinstance(table, dict) or len(table) > MAX_PEERS or not all(isinstance(k, str) for k in table):
        raise MalformedMessage(f"{key} must be an object of client id -> base64 {what}")
    return {peer: unb64(value, size=size, what=f"{what} for {peer[:64]!r}") for peer, value in table.items()}


# ---- client -> coordinator (and the coordinator's log) ----------------------------------
def advert_body(message: KeysAdvert) -> dict[str, str]:
    return {"cipher_public": b64(message.cipher_public), "mask_public": b64(message.mask_public)}


def advert_from(client: str, round: int, body: dict[str, Any]) -> KeysAdvert:
    size = keys.PUBLIC_KEY_BYTES
    return KeysAdvert(client, round, unb64(body.get("cipher_public"), size=size, what="cipher_public"),
                      unb64(body.get("mask_public"), size=size, what="mask_public"))


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
            "size": params.size, "bound": params.encoding.bound, "clients": params.encoding.clients}


def parameters_from_answer(round: int, answer: dict[str, Any]) -> RoundParameters:
    try:
        encoding = FixedPoint(float(answer["bound"]), int(answer["clients"]))
        return RoundParameters(round, tuple(answer["cohort"]), tuple(answer["neighbours"]), int(answer["threshold"]),
                               int(answer["size"]), encoding)
    except (KeyError, TypeError, ValueError) as err:
        raise MalformedMessage(f"the task's SecAgg parameters are malformed: {err}") from None


def neighbour_keys_answer(message: NeighbourKeys) -> dict[str, Any]:
    return {"round": message.round, "keys": {p: {"cipher_public": b64(c), "mask_public": b64(m)}
                                             for p, (c, m) in message.keys.items()}}


def neighbour_keys_from_answer(answer: dict[str, Any]) -> NeighbourKeys:
    table = answer.get("keys")
    if not isinstance(table, dict):
        raise MalformedMessage("keys must be an object")
    parsed = {}
    for peer, pair in table.items():
        advert = advert_from(peer, 0, pair if isinstance(pair, dict) else {})
        parsed[peer] = (advert.cipher_public, advert.mask_public)
    return NeighbourKeys(int(answer.get("round", -1)), parsed)


def shares_for_answer(message: SharesForYou) -> dict[str, Any]:
    return {"round": message.round, "sealed": {sender: b64(box) for sender, box in message.sealed.items()}}


def shares_for_from_answer(answer: dict[str, Any]) -> SharesForYou:
    return SharesForYou(int(answer.get("round", -1)), _table(answer, "sealed", size=SEALED_BOX_BYTES, what="sealed box"))


def unmask_request_answer(message: UnmaskRequest) -> dict[str, Any]:
    return {"round": message.round, "survivors": list(message.survivors), "dropped": list(message.dropped)}


def unmask_request_from_answer(answer: dict[str, Any]) -> UnmaskRequest:
    survivors, dropped = answer.get("survivors"), answer.get("dropped")
    if not isinstance(survivors, list) or not isinstance(dropped, list):
        raise MalformedMessage("survivors and dropped must be lists of client ids")
    return UnmaskRequest(int(answer.get("round", -1)), tuple(survivors), tuple(dropped))
