"""The server side of SecAgg+ (Bell et al. 2020) as a state machine: it ends knowing only the sum.

Stages close explicitly (the caller decides when: all answered, or a deadline): the
clients that answered a stage are the only ones carried into the next. Masked inputs
are folded into one uint32 accumulator as they arrive (mod 2^32), so the server never
holds more than one masked vector besides the sum. Unmasking recovers each survivor's
self-mask seed and each dropped client's masking key from `threshold` shares; the seed
is checked against its commitment and the key against its public key, so a wrong share
cannot produce a wrong sum. Where a secret cannot be recovered, `finish` raises
RoundFailed and nothing is released.

Between masking and unmasking sits the consistency check of Bonawitz et al. 2017 §6: the
survivors sign the survivor and dropped sets, and each survivor's unmask request carries
its neighbours' signatures (secagg.client says why that stops a lying server). An honest
server also checks signatures itself (`check_signed`, given the clients' verifier) so that
one client's bad signature is refused on receipt instead of making its neighbours abort;
it is a separate step so that replaying a log of already-checked messages never depends
on a certificate's dates or a revocation list that changed since.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlm.secagg import keys, shamir
from fedlm.secagg.encoding import FixedPoint
from fedlm.secagg.graph import neighbour_graph
from fedlm.secagg.identity import MAX_CREDENTIAL_BYTES, MAX_SIGNATURE_BYTES, Verifier, advert_message, survivors_message
from fedlm.secagg.masking import pair_mask_seed, pair_sign, seed_commitment, self_mask_seed
from fedlm.secagg.messages import (
    KeysAdvert,
    MaskedInput,
    NeighbourKeys,
    RoundFailed,
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

STAGES = ("advertise", "share", "mask", "confirm", "unmask", "done")


class SecAggServer:
    def __init__(self, round: int, cohort: Sequence[str], *, size: int, degree: int, threshold: int,
                 encoding: FixedPoint, rng: np.random.Generator) -> None:
        self.round, self.cohort, self.size = round, tuple(sorted(cohort)), size
        if len(set(self.cohort)) != len(self.cohort):
            raise SecAggError("the cohort has duplicate clients")
        if not 1 <= threshold <= degree:
            raise SecAggError(f"threshold {threshold} must be between 1 and the degree {degree}")
        self.threshold, self.encoding = threshold, encoding
        self.graph = neighbour_graph(self.cohort, degree, rng)
        self.points = {c: i + 1 for i, c in enumerate(self.cohort)}  # Shamir x of each client
        self._weights: dict[tuple[int, ...], list[int]] = {}  # Lagrange weights by point set
        self.stage = "advertise"
        self.adverts: dict[str, KeysAdvert] = {}
        self.sealed: dict[str, SealedShares] = {}
        self.total = np.zeros(size, np.uint32)
        self.masked: list[str] = []
        self.confirmations: dict[str, SurvivorsSignature] = {}
        self.replies: dict[str, UnmaskShares] = {}
        self.survivors: tuple[str, ...] = ()
        self.dropped: tuple[str, ...] = ()

    def parameters(self, client: str) -> RoundParameters:
        return RoundParameters(self.round, self.cohort, self.graph[client], self.threshold, self.size, self.encoding)

    def _expect(self, stage: str, client: str, round: int, seen: object) -> None:
        if round != self.round:
            raise SecAggError(f"message from {client} for round {round}; this is round {self.round}")
        if self.stage != stage:
            raise SecAggError(f"message from {client} for stage {stage!r}; the round is at {self.stage!r}")
        if client not in self.cohort:
            raise SecAggError(f"{client} is not in round {self.round}'s cohort")
        if client in seen:  # type: ignore[operator]
            raise SecAggError(f"{client} already answered stage {stage!r}")

    def _close(self, stage: str, answered: Sequence[str]) -> None:
        if self.stage != stage:
            raise SecAggError(f"cannot close stage {stage!r}; the round is at {self.stage!r}")
        self.stage = STAGES[STAGES.index(stage) + 1]
        if len(answered) < self.threshold + 1:
            self.stage = "failed"
            raise RoundFailed(f"only {len(answered)} clients answered stage {stage!r}; "
                              f"secure aggregation needs at least {self.threshold + 1}")

    # advertise keys
    def check_advert(self, message: KeysAdvert) -> None:
        """Raise SecAggError unless `receive_advert` would take the message (changes nothing)."""
        self._expect("advertise", message.client, message.round, self.adverts)
        if len(message.cipher_public) != keys.PUBLIC_KEY_BYTES or len(message.mask_public) != keys.PUBLIC_KEY_BYTES:
            raise SecAggError(f"{message.client} advertised a public key that is not {keys.PUBLIC_KEY_BYTES} bytes")
        if not (keys.is_usable_public(message.cipher_public) and keys.is_usable_public(message.mask_public)):
            # a low-order point makes every agreement with it fail: the neighbours (and finish) would raise
            raise SecAggError(f"{message.client} advertised a public key that agrees no secret (a low-order point)")
        if not 0 < len(message.credential) <= MAX_CREDENTIAL_BYTES or not 0 < len(message.signature) <= MAX_SIGNATURE_BYTES:
            raise SecAggError(f"{message.client} advertised no usable credential or signature")

    def receive_advert(self, message: KeysAdvert) -> None:
        self.check_advert(message)
        self.adverts[message.client] = message

    def close_advertising(self) -> None:
        self._close("advertise", list(self.adverts))

    def neighbour_keys(self, client: str) -> NeighbourKeys:
        return NeighbourKeys(self.round, {p: self.adverts[p] for p in self.graph[client] if p in self.adverts})

    # share keys
    def check_shares(self, message: SealedShares) -> None:
        """Raise SecAggError unless `receive_shares` would take the message (changes nothing)."""
        self._expect("share", message.client, message.round, self.sealed)
        if message.client not in self.adverts:
            raise SecAggError(f"{message.client} sends shares but advertised no keys")
        expected = {p for p in self.graph[message.client] if p in self.adverts}
        if set(message.sealed) != expected:
            raise SecAggError(f"{message.client} must seal one share for each neighbour that advertised keys")

    def receive_shares(self, message: SealedShares) -> None:
        self.check_shares(message)
        self.sealed[message.client] = message

    def close_sharing(self) -> None:
        self._close("share", list(self.sealed))

    def shares_for(self, client: str) -> SharesForYou:
        return SharesForYou(self.round, {s: m.sealed[client] for s, m in self.sealed.items() if client in m.sealed})

    # masked input
    def check_masked(self, message: MaskedInput) -> None:
        """Raise SecAggError unless `receive_masked` would take the message (changes nothing)."""
        self._expect("mask", message.client, message.round, self.masked)
        if message.client not in self.sealed:
            raise SecAggError(f"{message.client} sends a masked input but shared no keys")
        vector = message.vector
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32 or vector.shape != (self.size,):
            raise SecAggError(f"the masked input from {message.client} must be uint32 of length {self.size}")

    def receive_masked(self, message: MaskedInput) -> None:
        self.check_masked(message)
        np.add(self.total, message.vector, out=self.total)
        self.masked.append(message.client)

    def close_masking(self) -> SurvivorSets:
        self._close("mask", self.masked)
        self.survivors = tuple(sorted(self.masked))
        self.dropped = tuple(sorted(set(self.sealed) - set(self.masked)))
        return self.survivor_sets()

    # confirm the survivor sets
    def survivor_sets(self) -> SurvivorSets:
        return SurvivorSets(self.round, self.survivors, self.dropped)

    def check_confirmation(self, message: SurvivorsSignature) -> None:
        """Raise SecAggError unless `receive_confirmation` would take the message (changes nothing)."""
        self._expect("confirm", message.client, message.round, self.confirmations)
        if message.client not in self.survivors:
            raise SecAggError(f"{message.client} confirms the survivor sets but is not a survivor")
        if not 0 < len(message.signature) <= MAX_SIGNATURE_BYTES:
            raise SecAggError(f"{message.client} sent no usable signature")

    def receive_confirmation(self, message: SurvivorsSignature) -> None:
        self.check_confirmation(message)
        self.confirmations[message.client] = message

    def close_confirming(self) -> None:
        self._close("confirm", list(self.confirmations))

    def unmask_request(self, client: str) -> UnmaskRequest:
        """The sets, with the signatures of `client`'s neighbours that confirmed them (the ones it can check)."""
        signatures = {p: self.confirmations[p].signature for p in self.graph[client] if p in self.confirmations}
        return UnmaskRequest(self.round, self.survivors, self.dropped, signatures)

    # unmask
    def check_unmask(self, message: UnmaskShares) -> None:
        """Raise SecAggError unless `receive_unmask` would take the message (changes nothing)."""
        self._expect("unmask", message.client, message.round, self.replies)
        if message.client not in self.confirmations:
            raise SecAggError(f"{message.client} answers the unmask stage but did not confirm the survivor sets")
        peers = set(self.shares_for(message.client).sealed)  # the clients it masked with
        if set(message.seed_shares) != peers & set(self.survivors) or set(message.key_shares) != peers & set(self.dropped):
            raise SecAggError(f"{message.client} must send exactly the seed shares of its surviving "
                              "neighbours and the key shares of its dropped ones")
        for share in (*message.seed_shares.values(), *message.key_shares.values()):
            try:  # a share that is no field element would make `finish` raise half-way through unmasking
                shamir.decode_share(share)
            except ValueError as err:
                raise SecAggError(f"{message.client} sent a malformed share: {err}") from None

    def receive_unmask(self, message: UnmaskShares) -> None:
        self.check_unmask(message)
        self.replies[message.client] = message

    def finish(self, stream: MaskStream | None = None) -> np.ndarray:
        """The float32 sum of the survivors' inputs; RoundFailed where a secret cannot be recovered."""
        if self.stage != "unmask":
            raise SecAggError(f"cannot finish: the round is at {self.stage!r}")
        stream = stream or MaskStream(self.size)
        total = self.total  # unmasked in place: a failed round is final, its sum never used
        try:
            for client in self.survivors:
                seed = self._recover(client, "seed")
                if seed_commitment(seed) != self.sealed[client].seed_commitment:
                    raise RoundFailed(f"the seed recovered for {client} does not match its commitment")
                stream.add(total, self_mask_seed(seed, self.round), -1)
            for client in self.dropped:
                self._strip_pair_masks(client, total, stream)
        except Exception:  # the total is half unmasked: a second `finish` must never run on it
            self.stage = "failed"
            raise
        self.stage = "done"
        return self.encoding.decode_sum(total)

    def _recover(self, owner: str, kind: str) -> bytes:
        shares = {}
        for holder, reply in self.replies.items():
            table = reply.seed_shares if kind == "seed" else reply.key_shares
            if owner in table:
                shares[self.points[holder]] = shamir.decode_share(table[owner])
        if len(shares) < self.threshold:
            raise RoundFailed(f"only {len(shares)} shares of {owner}'s {kind} arrived; {self.threshold} are needed")
        points = tuple(sorted(shares)[: self.threshold])
        if points not in self._weights:
            self._weights[points] = shamir.lagrange_at_zero(points)
        try:
            return shamir.combine(shares, threshold=self.threshold, weights=self._weights[points])
        except ValueError as err:
            raise RoundFailed(f"{owner}'s {kind} cannot be recovered: {err}") from None

    def _strip_pair_masks(self, dropped: str, total: np.ndarray, stream: MaskStream) -> None:
        """Remove the masks survivors shared with a client that dropped before sending its input."""
        secret = self._recover(dropped, "key")
        try:
            private = keys.load_private(secret)
        except ValueError:
            raise RoundFailed(f"the key recovered for {dropped} is not a valid key") from None
        if keys.public_bytes(private) != self.adverts[dropped].mask_public:
            raise RoundFailed(f"the key recovered for {dropped} does not match its public key")
        for survivor in self.survivors:
            if survivor in self.sealed[dropped].sealed:  # the survivor holds its shares: it masked with it
                seed = pair_mask_seed(private, self.adverts[survivor].mask_public, self.round)
                stream.add(total, seed, -pair_sign(survivor, dropped))


def check_signed(server: SecAggServer, message: KeysAdvert | SurvivorsSignature, verify: Verifier) -> None:
    """SecAggError unless `message` is signed by its sender's identity (the advert's credential; for a
    confirmation, the credential of the sender's advert). Run after the server's `check_*`; changes nothing."""
    if isinstance(message, KeysAdvert):
        signed = advert_message(message.round, message.client, message.cipher_public, message.mask_public)
        credential = message.credential
    else:
        advert = server.adverts.get(message.client)
        if advert is None:
            raise SecAggError(f"{message.client} confirms the survivor sets but advertised no keys")
        signed = survivors_message(message.round, advert.mask_public, server.survivors, server.dropped)
        credential = advert.credential
    if not verify(message.client, credential, signed, message.signature):
        raise SecAggError(f"the signature of {message.client} does not verify with its credential")
