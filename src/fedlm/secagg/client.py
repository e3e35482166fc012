"""The client side of SecAgg+ (Bell et al. 2020; Bonawitz et al. 2017) as a state machine.

advertise -> share_keys -> mask_input -> confirm -> unmask: each method takes the server's
message, checks it, and returns the client's answer; no I/O. Its secrets (two X25519
private keys and the self-mask seed) never leave it except as Shamir shares sealed to its
neighbours. It defends against an active server as Bonawitz et al. 2017 §6 do:

- Signed adverts. A client signs its two public keys with its long-term identity key
  (secagg.identity) and checks every neighbour's advert before sealing anything to it; a
  swapped key, a key re-signed by anyone but that neighbour, or an advert replayed from
  another round makes it refuse the round before it shares anything.
- One secret per client. It never sends both the seed share and the key share of one
  client, and it refuses a threshold t that is not a majority of its k neighbours.
- The consistency check. Before unmasking, it signs the survivor and dropped sets the
  server shows it, and it releases shares only for the exact sets it signed, once at
  least t of its surviving neighbours signed them too (every included signature valid).

Why this suffices. Complete graph (k = n - 1, t > k/2): if two honest clients u and u'
released shares for different sets, u and t neighbours signed one, u' and t neighbours
the other; an honest client signs once, so these are 2t + 2 > n distinct clients among n,
impossible. Every honest client that releases anything released it for one pair of sets,
so for each client the server gets shares of its self-mask seed (it is a survivor) or of
its masking key (it dropped), never both, and one sum. Clients that collude with the
server can sign both sets: c of them keep the guarantee only while 2t > k - 1 + c, so
the threshold fraction must exceed one half by c / 2k (Bonawitz et al. take t > 2n/3
against up to n/3). Sparse SecAgg+ graphs: the guarantee is per neighbourhood: two honest
clients whose closed neighbourhoods share more than 2(k - t) clients cannot release for
different sets; two far apart on the graph can, and what then still protects a client v
is its own neighbourhood's majority (t of v's k neighbours must release each secret, so
not both). All of it rests on the PKI: whoever holds the CA key can mint Sybil clients
that sign anything, so it must not be the party running the coordinator.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np

from fedlm.secagg import keys, shamir
from fedlm.secagg.identity import Signer, Verifier, advert_message, survivors_message
from fedlm.secagg.masking import pair_mask_seed, pair_sign, seed_commitment, self_mask_seed
from fedlm.secagg.messages import (
    KeysAdvert,
    MaskedInput,
    NeighbourKeys,
    RoundParameters,
    SealedShares,
    SecAggError,
    SharesForYou,
    SurvivorSets,
    SurvivorsSignature,
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
    def __init__(self, client_id: str, params: RoundParameters, *, signer: Signer, verify: Verifier) -> None:
        if client_id not in params.cohort or client_id in params.neighbours:
            raise SecAggError(f"client {client_id} is not a cohort member with those neighbours")
        if not 2 * params.threshold > len(params.neighbours) >= params.threshold >= 1:
            # below a majority, a server that tells half the neighbours "dropped" and half "survived"
            # could collect both the seed and the key of this client and strip all its masks
            raise SecAggError(f"threshold {params.threshold} must be a majority of the {len(params.neighbours)} neighbours")
        self.id, self.params = client_id, params
        self.stage = "advertise"
        self._signer, self._verify = signer, verify
        self._cipher_key = keys.new_private_key()
        self._mask_key = keys.new_private_key()
        self._seed = os.urandom(shamir.SECRET_BYTES)
        self._peers: dict[str, KeysAdvert] = {}  # neighbours whose signed adverts checked out
        self._held: dict[str, tuple[int, int]] = {}  # sender -> (its seed share, its key share) for me
        self._masked_with: tuple[str, ...] = ()
        self._signed: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (survivors, dropped) I signed

    def _expect(self, expected: str, round: int) -> None:
        if self.stage != expected:
            raise SecAggError(f"client {self.id} is at stage {self.stage!r}, not {expected!r}")
        if round != self.params.round:
            raise SecAggError(f"message for round {round}; client {self.id} is in round {self.params.round}")

    def _advance(self, expected: str, following: str, round: int) -> None:
        self._expect(expected, round)
        self.stage = following

    def _abort(self, reason: str) -> NoReturn:
        """The server was caught misbehaving: this client answers nothing more in this round."""
        self.stage = "aborted"
        raise SecAggError(f"{reason}; client {self.id} refuses round {self.params.round}")

    def advertise(self) -> KeysAdvert:
        self._advance("advertise", "share", self.params.round)
        cipher, mask = keys.public_bytes(self._cipher_key), keys.public_bytes(self._mask_key)
        signature = self._signer.sign(advert_message(self.params.round, self.id, cipher, mask))
        return KeysAdvert(self.id, self.params.round, cipher, mask, self._signer.credential, signature)

    def _is_signed(self, peer: str, advert: KeysAdvert) -> bool:
        message = advert_message(self.params.round, peer, advert.cipher_public, advert.mask_public)
        return (advert.client == peer and advert.round == self.params.round
                and self._verify(peer, advert.credential, message, advert.signature))

    def share_keys(self, message: NeighbourKeys) -> SealedShares:
        """Check every neighbour's signed advert, then split the seed and the masking key among them; seal each pair."""
        strangers = set(message.adverts) - set(self.params.neighbours)
        if strangers:
            raise SecAggError(f"keys offered for clients that are not {self.id}'s neighbours: {sorted(strangers)[:3]}")
        if len(message.adverts) < self.params.threshold:
            raise SecAggError(f"only {len(message.adverts)} neighbours of {self.id} advertised keys; "
                              f"{self.params.threshold} are needed to share its secrets")
        self._expect("share", message.round)
        for peer, advert in sorted(message.adverts.items()):
            if not self._is_signed(peer, advert):
                self._abort(f"the advert of neighbour {peer} fails its signature check (a swapped or replayed key)")
            if not (keys.is_usable_public(advert.cipher_public) and keys.is_usable_public(advert.mask_public)):
                self._abort(f"neighbour {peer} advertised a key that agrees no secret")
        self._advance("share", "mask", message.round)
        self._peers = dict(message.adverts)
        peers = sorted(self._peers)
        points = [shamir_point(self.params, p) for p in peers]
        t = self.params.threshold
        seed_shares = shamir.split(self._seed, threshold=t, points=points)
        key_shares = shamir.split(keys.private_bytes(self._mask_key), threshold=t, points=points)
        sealed = {}
        for peer, seed_share, key_share in zip(peers, seed_shares, key_shares):
            box_key = keys.agree(self._cipher_key, self._peers[peer].cipher_public, purpose="share-seal",
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
        self._advance("mask", "confirm", message.round)
        self._held = held
        self._masked_with = tuple(sorted(held))
        stream.add(encoded, self_mask_seed(self._seed, self.params.round))
        for peer in self._masked_with:
            seed = pair_mask_seed(self._mask_key, self._peers[peer].mask_public, self.params.round)
            stream.add(encoded, seed, pair_sign(self.id, peer))
        return MaskedInput(self.id, self.params.round, encoded)

    def _open(self, sender: str, box: bytes, round: int) -> tuple[int, int]:
        box_key = keys.agree(self._cipher_key, self._peers[sender].cipher_public, purpose="share-seal",
                             round=self.params.round, length=SHARE_KEY_BYTES)
        plaintext = keys.open_sealed(box_key, box, share_context(round, sender, self.id))
        size = shamir.SHARE_BYTES
        return shamir.decode_share(plaintext[:size]), shamir.decode_share(plaintext[size:])

    def confirm(self, message: SurvivorSets) -> SurvivorsSignature:
        """Sign the survivor and dropped sets the server shows me (once), after checking they make sense."""
        self._expect("confirm", message.round)
        survivors, dropped = set(message.survivors), set(message.dropped)
        if len(survivors) != len(message.survivors) or len(dropped) != len(message.dropped):
            self._abort("the server names a client twice in the survivor sets")
        if survivors & dropped:
            self._abort(f"the server names {sorted(survivors & dropped)[:3]} both survivors and dropped, "
                        "which would reveal both secrets of a client")
        if self.id not in survivors:
            self._abort(f"client {self.id} is not among the survivors it is asked to confirm")
        if (survivors | dropped) - set(self.params.cohort):
            self._abort(f"the survivor sets name clients outside the cohort: {sorted((survivors | dropped) - set(self.params.cohort))[:3]}")
        unaccounted = set(self._masked_with) - survivors - dropped
        if unaccounted:
            self._abort(f"neighbours {sorted(unaccounted)[:3]} that {self.id} masked with are neither survivors nor dropped")
        if len(survivors) < self.params.threshold:
            self._abort(f"only {len(survivors)} survivors: fewer than the threshold {self.params.threshold}")
        self.stage = "unmask"
        self._signed = (tuple(sorted(survivors)), tuple(sorted(dropped)))
        mine = keys.public_bytes(self._mask_key)
        return SurvivorsSignature(self.id, self.params.round,
                                  self._signer.sign(survivors_message(self.params.round, mine, *self._signed)))

    def unmask(self, message: UnmaskRequest) -> UnmaskShares:
        """Seed shares of the survivors and key shares of the dropped, among those I masked with, released only
        for the sets I signed and once `threshold` of my surviving neighbours signed them too."""
        self._expect("unmask", message.round)
        assert self._signed is not None  # set by confirm, the only way into this stage
        if (tuple(sorted(message.survivors)), tuple(sorted(message.dropped))) != self._signed:
            self._abort("the unmask request names other survivor sets than the ones it signed")
        survivors = set(self._signed[0])
        for signer, signature in sorted(message.signatures.items()):
            advert = self._peers.get(signer)
            if advert is None or signer not in survivors:
                self._abort(f"the unmask request carries a signature of {signer}, not a surviving neighbour")
            if not self._verify(signer, advert.credential,
                                survivors_message(self.params.round, advert.mask_public, *self._signed), signature):
                self._abort(f"the survivor-set signature of neighbour {signer} does not verify")
        if len(message.signatures) < self.params.threshold:
            self._abort(f"only {len(message.signatures)} surviving neighbours signed the survivor sets; "
                        f"{self.params.threshold} must before a share is released")
        self.stage = "done"
        dropped = set(self._signed[1])
        encode = shamir.encode_share
        seed_shares = {u: encode(self._held[u][0]) for u in self._masked_with if u in survivors}
        key_shares = {u: encode(self._held[u][1]) for u in self._masked_with if u in dropped}
        return UnmaskShares(self.id, self.params.round, seed_shares, key_shares)
