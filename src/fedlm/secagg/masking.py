"""Seeds of the masks: the self mask from a client's own secret, pairwise masks from key agreement.

Client u adds PRG(self seed) and, for each neighbour v it shares with, +PRG(s_uv) when
u sorts before v and -PRG(s_uv) otherwise (Bonawitz et al. 2017): the pairwise masks of
two surviving neighbours cancel in the sum.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedlm.secagg.keys import agree
from fedlm.secagg.prg import SEED_BYTES


def self_mask_seed(secret: bytes, round: int) -> bytes:
    return hashlib.sha256(b"fedlm-secagg/self-mask/%d/" % round + secret).digest()[:SEED_BYTES]


def seed_commitment(secret: bytes) -> bytes:
    return hashlib.sha256(b"fedlm-secagg/commit/" + secret).digest()


def pair_mask_seed(private: X25519PrivateKey, peer_public: bytes, round: int) -> bytes:
    return agree(private, peer_public, purpose="pair-mask", round=round, length=SEED_BYTES)


def pair_sign(me: str, peer: str) -> int:
    return 1 if me < peer else -1
