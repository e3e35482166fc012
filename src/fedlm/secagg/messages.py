"""The typed messages of one SecAgg+ round, in the order they travel.

    server -> client   RoundParameters     cohort, neighbours, threshold, encoding
    client -> server   KeysAdvert          two X25519 public keys, signed with its identity key
    server -> client   NeighbourKeys       the neighbours' signed adverts
    client -> server   SealedShares        shares of its seed and masking key, one sealed box per neighbour
    server -> client   SharesForYou        the boxes addressed to it
    client -> server   MaskedInput         its encoded update plus masks, mod 2^32
    server -> client   SurvivorSets        who survived, who dropped
    client -> server   SurvivorsSignature  its signature on those two sets
    server -> client   UnmaskRequest       the same sets, and its surviving neighbours' signatures on them
    client -> server   UnmaskShares        seed shares of survivors, key shares of the dropped

The signatures are Bonawitz et al. 2017's defence against an active server (§6; see
secagg.identity and secagg.client). The protocol code only builds and checks these;
moving them (in process, over HTTP) is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedlm.secagg.encoding import FixedPoint


class SecAggError(ValueError):
    """A message that breaks the protocol: wrong round or stage, unknown sender, bad shape."""


class RoundFailed(RuntimeError):
    """Too few clients survived to recover the sum; nothing is released for this round."""


@dataclass(frozen=True)
class RoundParameters:
    round: int
    cohort: tuple[str, ...]  # sorted; a client's Shamir point is its position + 1
    neighbours: tuple[str, ...]
    threshold: int
    size: int
    encoding: FixedPoint


@dataclass(frozen=True)
class KeysAdvert:
    client: str
    round: int
    cipher_public: bytes  # seals the shares sent to this client
    mask_public: bytes  # agrees the pairwise mask seeds
    credential: bytes  # what its signature verifies with: an Ed25519 public key (simulation), a PEM certificate (service)
    signature: bytes  # over identity.advert_message(round, client, cipher_public, mask_public)


@dataclass(frozen=True)
class NeighbourKeys:
    round: int
    adverts: dict[str, KeysAdvert]  # neighbour -> its advert, as it signed it


@dataclass(frozen=True)
class SealedShares:
    client: str
    round: int
    sealed: dict[str, bytes]  # recipient -> AES-GCM box of (seed share, key share)
    seed_commitment: bytes  # SHA-256 of the self-mask seed: the server checks what it recovers


@dataclass(frozen=True)
class SharesForYou:
    round: int
    sealed: dict[str, bytes]  # sender -> box


@dataclass(frozen=True)
class MaskedInput:
    client: str
    round: int
    vector: np.ndarray = field(repr=False)  # uint32


@dataclass(frozen=True)
class SurvivorSets:
    round: int
    survivors: tuple[str, ...]  # sorted: the clients whose masked inputs are in the sum
    dropped: tuple[str, ...]  # sorted: shared keys, sent no masked input


@dataclass(frozen=True)
class SurvivorsSignature:
    client: str
    round: int
    signature: bytes  # over identity.survivors_message(round, its mask_public, survivors, dropped)


@dataclass(frozen=True)
class UnmaskRequest:
    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: dict[str, bytes]  # surviving neighbour of the recipient -> its SurvivorsSignature


@dataclass(frozen=True)
class UnmaskShares:
    client: str
    round: int
    seed_shares: dict[str, bytes]  # survivor -> share of its self-mask seed
    key_shares: dict[str, bytes]  # dropped client -> share of its masking key
