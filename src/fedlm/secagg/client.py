"""The client side of SecAgg+ (Bell et al. 2020; Bonawitz et al. 2017) as a state machine.

advertise -> share_keys -> mask_input -> unmask: each method takes the server's message,
checks it, and returns the client's answer; no I/O. Its secrets (two X25519 private keys
and the self-mask seed) never leave it except as Shamir shares sealed to its neighbours.
It refuses a server that asks for both the seed share and the key share of one client,
which would let the server strip that client's masks.
"""

from __future__ import annotations

import os

import numpy as np

from fedlm.secagg import keys, shamir
from fedlm.secagg.masking import pair_mask_seed, pair_sign, seed_commitment, self_mask_seed
from fedlm.secagg.messages import (
    KeysAdvert,
    MaskedInput,
    NeighbourKeys,
    RoundParameters,
    SealedShares,
    SecAggError,
    SharesForYou,
    UnmaskRequest,
    UnmaskShares,
)
from fedlm.secagg.prg import MaskStream

SHARE_KEY_BYTES = 32


def share_context(round: int, sender: str, recipient: str) -> bytes:
    """Associated data of a sealed share: binds it to its round, sender and recipient."""
    return f"fedlm-secagg/share/{round}/{sender}->{recipient}".encode()


def shamir_point(params: RoundParameters, client: str) -> int:
    return params.cohort.index(client) + 1


class SecAggClient:
    def __init__(self, client_id: str, params: RoundParameters) -> None:
        if client_id not in params.cohort or client_id in params.neighbours:
            raise SecAggError(f"client {client_id} is not a cohort member with those neighbours")
        if not 2 * params.threshold > len(params.neighbours) >= params.threshold >= 1:
            # below a majority, a server that tells half the neighbours "dropped" and half "survived"
            # could collect both the seed and the key of this client and strip all its masks
            raise SecAggError(f"threshold {params.threshold} must be a majority of the {len(params.neighbours)} neighbours")
        self.id, self.params = client_id, params
        self.stage = "advertise"
        self._cipher_key = keys.new_private_key()
        self._mask_key = keys.new_private_key()
        self._seed = os.urandom(shamir.SECRET_BYTES)
        self._peers: dict[str, tuple[bytes, bytes]] = {}  # neighbours that advertised keys
        self._held: dict[str, tuple[int, int]] = {}  # sender -> (its seed share, its key share) for me
        self._masked_with: tuple[str, ...] = ()

    def _advance(self, expected: str, following: str, round: int) -> None:
        if self.stage != expected:
            raise SecAggError(f"client {self.id} is at stage {self.stage!r}, not {expected!r}")
        if round != self.params.round:
            raise SecAggError(f"message for round {round}; client {self.id} is in round {self.params.round}")
        self.stage = following

    def advertise(self) -> KeysAdvert:
        self._advance("advertise", "share", self.params.round)
        return KeysAdvert(self.id, self.params.round, keys.public_bytes(self._cipher_key), keys.public_bytes(self._mask_key))

    def share_keys(self, message: NeighbourKeys) -> SealedShares:
        """Split the seed and the masking key among the neighbours that advertised; seal each pair."""
        strangers = set(message.keys) - set(self.params.neighbours)
        if strangers:
            raise SecAggError(f"keys offered for clients that are not {self.id}'s neighbours: {sorted(strangers)[:3]}")
        if len(message.keys) < self.params.threshold:
            raise SecAggError(f"only {len(message.keys)} neighbours of {self.id} advertised keys; "
                              f"{self.params.threshold} are needed to share its secrets")
        self._advance("share", "mask", message.round)
        self._peers = dict(message.keys)
        peers = sorted(self._peers)
        points = [shamir_point(self.params, p) for p in peers]
        t = self.params.threshold
        seed_shares = shamir.split(self._seed, threshold=t, points=points)
        key_shares = shamir.split(keys.private_bytes(self._mask_key), threshold=t, points=points)
        sealed = {}
        for peer, seed_share, key_share in zip(peers, seed_shares, key_shares):
            box_key = keys.agree(self._cipher_key, self._peers[peer][0], purpose="share-seal",
                                 round=self.params.round, length=SHARE_KEY_BYTES)
            plaintext = shamir.encode_share(seed_share) + shamir.encode_share(key_share)
            sealed[peer] = keys.seal(box_key, plaintext, share_context(self.params.round, self.id, peer))
        return SealedShares(self.id, self.params.round, sealed, seed_commitment(self._seed))

    def mask_input(self, message: SharesForYou, encoded: np.ndarray, stream: MaskStream) -> MaskedInput:
        """Open the shares sent to me, then mask my encoded input in place (uint32, mod 2^32).

        I mask with exactly the neighbours whose shares reached me: those the server can
        recover if they drop later. A share that fails authentication raises ShareTampered.
        """
        unknown = set(message.sealed) - set(self._peers)
        if unknown:
            raise SecAggError(f"shares for {self.id} from clients it has no keys of: {sorted(unknown)[:3]}")
        if encoded.dtype != np.uint32 or encoded.shape != (self.params.size,):
            raise SecAggError(f"the encoded input must be uint32 of length {self.params.size}")
        if self.stage != "mask":
            raise SecAggError(f"client {self.id} is at stage {self.stage!r}, not 'mask'")
        if len(message.sealed) < self.params.threshold:
            # with fewer pairwise masks the server could strip the self mask and see this input alone
            raise SecAggError(f"only {len(message.sealed)} neighbours of {self.id} shared keys; "
                              f"{self.params.threshold} are needed to mask its input")
        held = {sender: self._open(sender, box, message.round) for sender, box in message.sealed.items()}
        self._advance("mask", "unmask", message.round)
        self._held = held
        self._masked_with = tuple(sorted(held))
        stream.add(encoded, self_mask_seed(self._seed, self.params.round))
        for peer in self._masked_with:
            seed = pair_mask_seed(self._mask_key, self._peers[peer][1], self.params.round)
            stream.add(encoded, seed, pair_sign(self.id, peer))
        return MaskedInput(self.id, self.params.round, encoded)

    def _open(self, sender: str, box: bytes, round: int) -> tuple[int, int]:
        box_key = keys.agree(self._cipher_key, self._peers[sender][0], purpose="share-seal",
                             round=self.params.round, length=SHARE_KEY_BYTES)
        plaintext = keys.open_sealed(box_key, box, share_context(round, sender, self.id))
        size = shamir.SHARE_BYTES
        return shamir.decode_share(plaintext[:size]), shamir.decode_share(plaintext[size:])

    def unmask(self, message: UnmaskRequest) -> UnmaskShares:
        """Seed shares of the survivors and key shares of the dropped, among those I masked with."""
        survivors, dropped = set(message.survivors), set(message.dropped)
        if survivors & dropped:
            raise SecAggError(f"the server names {sorted(survivors & dropped)[:3]} both survivors and dropped; "
                              f"{self.id} refuses to reveal both secrets of a client")
        if self.id not in survivors:
            raise SecAggError(f"client {self.id} is not among the survivors it is asked to unmask for")
        if len(survivors) < self.params.threshold:
            raise SecAggError(f"only {len(survivors)} survivors: fewer than the threshold {self.params.threshold}")
        self._advance("unmask", "done", message.round)
        encode = shamir.encode_share
        seed_shares = {u: encode(self._held[u][0]) for u in self._masked_with if u in survivors}
        key_shares = {u: encode(self._held[u][1]) for u in self._masked_with if u in dropped}
        return UnmaskShares(self.id, self.params.round, seed_shares, key_shares)
