"""A malicious SecAgg server (Bonawitz et al. 2017 §6): honest clients refuse it before it learns an input.

The server here is the honest state machine plus the test, which rewrites what it sends:
(a) it swaps a neighbour's key (or re-signs an advert with a key of its own), (b) it tells
some clients that a live client dropped while the others think it survived, (c) it shows
different survivor sets to different clients, (d) it withholds or forges confirmations.
Each time the honest clients refuse, and the shares they do release never give the
server both secrets (self-mask seed and masking key) of any one client.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedlm.secagg import keys, shamir
from fedlm.secagg.identity import Ed25519Signer, advert_message, make_directory, survivors_message
from fedlm.secagg.masking import seed_commitment
from fedlm.secagg.messages import SecAggError, SurvivorSets, UnmaskRequest, UnmaskShares
from fedlm.secagg.prg import MaskStream
from fedlm.secagg.server import check_signed
from fedlm.secagg.session import make_server

from protocol_parties import honest_clients

SIZE = 16


def advertised(n: int):
    """A complete-graph round of n clients (k = n - 1, t = floor(k/2) + 1) past its advertise stage."""
    cohort = [chr(ord("a") + i) for i in range(n)]
    server = make_server(1, cohort, size=SIZE, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(0))
    directory = make_directory(server.cohort)
    clients = honest_clients(server, directory)
    for c in server.cohort:
        server.receive_advert(clients[c].advertise())
    server.close_advertising()
    return server, clients, directory


def masked(n: int):
    """The same round past its mask stage: every client shared and masked a small input."""
    server, clients, directory = advertised(n)
    for c in server.cohort:
        server.receive_shares(clients[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    for c in server.cohort:
        encoded = server.encoding.encode(np.full(SIZE, 0.1, np.float32), np.random.default_rng(1), np.empty(SIZE, np.uint32))
        server.receive_masked(clients[c].mask_input(server.shares_for(c), encoded, MaskStream(SIZE)))
    server.close_masking()
    return server, clients, directory


def without(server, victim: str) -> SurvivorSets:
    """The lie: `victim` masked its input, but these sets say it dropped."""
    return SurvivorSets(1, tuple(c for c in server.cohort if c != victim), (victim,))


def recovered(server, replies: dict[str, UnmaskShares], owner: str, kind: str) -> bytes | None:
    """What the server reconstructs of `owner`'s seed or key from the shares it was sent; None below the threshold."""
    shares = {}
    for holder, reply in replies.items():
        table = reply.seed_shares if kind == "seed" else reply.key_shares
        if owner in table:
            shares[server.points[holder]] = shamir.decode_share(table[owner])
    return shamir.combine(shares, threshold=server.threshold) if len(shares) >= server.threshold else None


def is_true_secret(server, owner: str, kind: str, secret: bytes | None) -> bool:
    if secret is None:
        return False
    if kind == "seed":
        return seed_commitment(secret) == server.sealed[owner].seed_commitment
    return keys.public_bytes(keys.load_private(secret)) == server.adverts[owner].mask_public


def ask_to_unmask(clients, requests: dict[str, UnmaskRequest]) -> tuple[dict[str, UnmaskShares], dict[str, str]]:
    """Each client's answer to its request: its shares, or why it refused."""
    replies, refusals = {}, {}
    for c, request in requests.items():
        try:
            replies[c] = clients[c].unmask(request)
        except SecAggError as err:
            refusals[c] = str(err)
    return replies, refusals


# ---- (a) a swapped or re-signed key -------------------------------------------------------------
def swap_mask_key(advert, directory):
    return dataclasses.replace(advert, mask_public=keys.public_bytes(keys.new_private_key()))


def swap_cipher_key(advert, directory):
    return dataclasses.replace(advert, cipher_public=keys.public_bytes(keys.new_private_key()))


def resign_with_server_key(advert, directory):
    own, cipher = Ed25519Signer.generate(), keys.public_bytes(keys.new_private_key())
    return dataclasses.replace(advert, cipher_public=cipher, credential=own.credential,
                               signature=own.sign(advert_message(1, advert.client, cipher, advert.mask_public)))


def resign_with_another_clients_key(advert, directory):
    accomplice, cipher = directory.signers["d"], keys.public_bytes(keys.new_private_key())
    return dataclasses.replace(advert, cipher_public=cipher, credential=accomplice.credential,
                               signature=accomplice.sign(advert_message(1, advert.client, cipher, advert.mask_public)))


def replay_from_another_round(advert, directory):
    signer, cipher, mask = directory.signers[advert.client], advert.cipher_public, advert.mask_public
    return dataclasses.replace(advert, signature=signer.sign(advert_message(2, advert.client, cipher, mask)))


@pytest.mark.parametrize("tamper", [swap_mask_key, swap_cipher_key, resign_with_server_key,
                                    resign_with_another_clients_key, replay_from_another_round])
def test_a_swapped_or_resigned_neighbour_key_is_refused_before_anything_is_shared(tamper):
    # Prepare: the server rewrites b's advert in what it sends to a
    server, clients, directory = advertised(4)
    honest = server.neighbour_keys("a")
    tampered = dataclasses.replace(honest, adverts={**honest.adverts, "b": tamper(honest.adverts["b"], directory)})
    # Execute
    with pytest.raises(SecAggError, match="neighbour b fails its signature check") as refusal:
        clients["a"].share_keys(tampered)
    # Assert: a shared nothing, and stays out of the round even when offered the honest keys afterwards
    assert "refuses round 1" in str(refusal.value)
    assert clients["a"].stage == "aborted"
    with pytest.raises(SecAggError, match="'aborted'"):
        clients["a"].share_keys(honest)
    # while the untouched advert passes: the same client state machine shares when nothing was rewritten
    assert set(clients["c"].share_keys(server.neighbour_keys("c")).sealed) == {"a", "b", "d"}


def test_another_clients_genuine_advert_relabelled_as_a_neighbour_is_refused():
    # Prepare: the server relays c's own, correctly signed advert under b's name
    server, clients, _ = advertised(4)
    honest = server.neighbour_keys("a")
    relabelled = dataclasses.replace(honest.adverts["c"], client="b")
    # Execute / Assert
    with pytest.raises(SecAggError, match="neighbour b fails its signature check"):
        clients["a"].share_keys(dataclasses.replace(honest, adverts={**honest.adverts, "b": relabelled}))


def test_the_honest_server_refuses_a_client_advert_or_confirmation_whose_signature_fails():
    # Prepare
    server, clients, directory = advertised(4)
    good = server.adverts["b"]
    forged = resign_with_server_key(good, directory)
    # Execute / Assert: a forged advert is caught by the server's own check; the genuine one passes
    check_signed(server, good, directory.verify)
    with pytest.raises(SecAggError, match="signature of b does not verify"):
        check_signed(server, forged, directory.verify)
    # and a confirmation signed over other sets than the server's
    server, clients, directory = masked(4)
    honest = clients["b"].confirm(server.survivor_sets())
    check_signed(server, honest, directory.verify)
    other = without(server, "c")
    lying = dataclasses.replace(honest, signature=directory.signers["b"].sign(
        survivors_message(1, server.adverts["b"].mask_public, other.survivors, other.dropped)))
    with pytest.raises(SecAggError, match="signature of b does not verify"):
        check_signed(server, lying, directory.verify)


# ---- (b) lying about dropouts --------------------------------------------------------------------
@pytest.mark.parametrize("told_dropped", [1, 2, 3, 4, 5])
def test_telling_some_clients_a_live_client_dropped_never_reveals_both_its_secrets(told_dropped):
    # Prepare: seven clients, t = 4 of k = 6. Client a masked its input; the server tells the first
    # `told_dropped` of the others that a dropped (to collect key shares of a) and the rest that all survived
    # (to collect seed shares of a), then hands each group the best it can: its own group's signatures
    server, clients, _ = masked(7)
    liars_group = list(server.cohort[1:1 + told_dropped])
    honest_group = [c for c in server.cohort if c not in liars_group]
    shown = {c: without(server, "a") if c in liars_group else server.survivor_sets() for c in server.cohort}
    signed = {c: clients[c].confirm(shown[c]).signature for c in server.cohort}
    requests = {}
    for c in server.cohort:
        group = liars_group if c in liars_group else honest_group
        sets = shown[c]
        requests[c] = UnmaskRequest(1, sets.survivors, sets.dropped, {p: signed[p] for p in group if p != c})
    # Execute
    replies, refusals = ask_to_unmask(clients, requests)
    # Assert: a group releases only when t of its members vouch for it, so at most one group does...
    t = server.threshold
    for c in server.cohort:
        vouching = len(requests[c].signatures)
        assert (c in replies) == (vouching >= t), (c, vouching)
        if c in refusals:
            assert f"only {vouching} surviving neighbours signed" in refusals[c]
    assert not (any(c in replies for c in liars_group) and any(c in replies for c in honest_group))
    # ...and the server never holds both the seed and the key of any client
    for owner in server.cohort:
        seed, key = (is_true_secret(server, owner, kind, recovered(server, replies, owner, kind)) for kind in ("seed", "key"))
        assert not (seed and key), owner
    if told_dropped == 5:  # the liars' group is large enough: it gets a's key, never a's seed
        assert is_true_secret(server, "a", "key", recovered(server, replies, "a", "key"))
        assert recovered(server, replies, "a", "seed") is None


@pytest.mark.parametrize("told_dropped", [1, 2, 3, 4])
def test_in_a_sparse_graph_the_dropout_lie_never_reveals_both_secrets_of_a_client(told_dropped):
    # Prepare: twelve clients, k = 4, t = 3 (SecAgg+). Client a masked its input; `told_dropped` of its four
    # neighbours are told it dropped, everyone else the truth; each client gets every valid signature the
    # server holds on its own sets from its neighbours
    cohort = [chr(ord("a") + i) for i in range(12)]
    server = make_server(1, cohort, size=SIZE, neighbours=4, threshold=0.5, bound=1.0, rng=np.random.default_rng(3))
    clients = honest_clients(server)
    for c in cohort:
        server.receive_advert(clients[c].advertise())
    server.close_advertising()
    for c in cohort:
        server.receive_shares(clients[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    for c in cohort:
        server.receive_masked(clients[c].mask_input(server.shares_for(c), np.zeros(SIZE, np.uint32), MaskStream(SIZE)))
    server.close_masking()
    liars_group = set(server.graph["a"][:told_dropped])
    shown = {c: without(server, "a") if c in liars_group else server.survivor_sets() for c in cohort}
    signed = {c: clients[c].confirm(shown[c]).signature for c in cohort}
    requests = {c: UnmaskRequest(1, shown[c].survivors, shown[c].dropped,
                                 {p: signed[p] for p in server.graph[c] if shown[p] == shown[c]}) for c in cohort}
    # Execute
    replies, _ = ask_to_unmask(clients, requests)
    # Assert: no client told the lie finds t neighbours that signed it too, so none releases a share; and a's
    # two secrets each need t = 3 of its 4 neighbours, so however the server splits them, not both are recovered
    assert server.threshold == 3
    assert liars_group.isdisjoint(replies)
    for owner in cohort:
        seed, key = (is_true_secret(server, owner, kind, recovered(server, replies, owner, kind)) for kind in ("seed", "key"))
        assert not (seed and key), owner


def test_the_consistency_check_stops_the_dropout_lie_even_with_a_colluding_client():
    # Prepare: six clients, t = 3 of k = 5; m colludes with the server (it gives away both its shares of
    # every client and signs whatever it is shown). a masked its input; p and q are told a dropped, r and s
    # that it survived. Without the check, r, s and m would hand over 3 seed shares of a, and p, q and m
    # 3 key shares: both secrets.
    server = make_server(1, ["a", "m", "p", "q", "r", "s"], size=SIZE, neighbours=0, threshold=0.5, bound=1.0,
                         rng=np.random.default_rng(0))
    directory = make_directory(server.cohort)
    clients = honest_clients(server, directory)
    for c in server.cohort:
        server.receive_advert(clients[c].advertise())
    server.close_advertising()
    for c in server.cohort:
        server.receive_shares(clients[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    for c in server.cohort:
        server.receive_masked(clients[c].mask_input(server.shares_for(c), np.zeros(SIZE, np.uint32), MaskStream(SIZE)))
    server.close_masking()
    truth, lie = server.survivor_sets(), without(server, "a")
    t = server.threshold
    assert t == 3 and len(["p", "q", "m"]) >= t and len(["r", "s", "m"]) >= t  # the old rule would let both through
    signed_truth = {c: clients[c].confirm(truth).signature for c in ("a", "r", "s", "m")}
    signed_lie = {c: clients[c].confirm(lie).signature for c in ("p", "q")}
    m_mask = server.adverts["m"].mask_public
    signed_lie["m"] = directory.signers["m"].sign(survivors_message(1, m_mask, lie.survivors, lie.dropped))
    requests = {c: UnmaskRequest(1, lie.survivors, lie.dropped, {p: s for p, s in signed_lie.items() if p != c})
                for c in ("p", "q")}
    requests.update({c: UnmaskRequest(1, truth.survivors, truth.dropped, {p: s for p, s in signed_truth.items() if p != c})
                     for c in ("r", "s")})
    # Execute
    replies, refusals = ask_to_unmask(clients, requests)
    held_by_m = clients["m"]._held["a"]  # the colluder's own shares of a's seed and key, given to the server
    replies["m"] = UnmaskShares("m", 1, {"a": shamir.encode_share(held_by_m[0])}, {"a": shamir.encode_share(held_by_m[1])})
    # Assert: p and q refuse (2 signatures, 3 needed); r and s release seed shares; a's key stays unknown
    assert sorted(refusals) == ["p", "q"] and sorted(replies) == ["m", "r", "s"]
    assert is_true_secret(server, "a", "seed", recovered(server, replies, "a", "seed"))
    assert recovered(server, replies, "a", "key") is None


# ---- (c) different survivor sets for different clients --------------------------------------------
def test_clients_shown_different_survivor_sets_refuse_to_unmask():
    # Prepare: six clients, t = 3; a, b, c are shown everyone as survivors, d, e, f are told c dropped.
    # Every client then gets the first sets with every signature the server collected.
    server, clients, _ = masked(6)
    truth, lie = server.survivor_sets(), without(server, "c")
    shown = {c: truth if c in "abc" else lie for c in server.cohort}
    signed = {c: clients[c].confirm(shown[c]).signature for c in server.cohort}
    requests = {c: UnmaskRequest(1, truth.survivors, truth.dropped, {p: s for p, s in signed.items() if p != c})
                for c in server.cohort}
    # Execute
    replies, refusals = ask_to_unmask(clients, requests)
    # Assert: d, e, f see sets they never signed; a, b, c see signatures that are not on their sets
    assert replies == {}
    for c in "def":
        assert "other survivor sets than the ones it signed" in refusals[c]
    for c in "abc":
        assert "does not verify" in refusals[c]
    assert all(clients[c].stage == "aborted" for c in server.cohort)


def test_a_client_never_signs_twice_so_a_second_set_cannot_be_shown_to_it():
    # Prepare
    server, clients, _ = masked(4)
    clients["a"].confirm(server.survivor_sets())
    # Execute / Assert
    with pytest.raises(SecAggError, match="at stage 'unmask', not 'confirm'"):
        clients["a"].confirm(without(server, "b"))


# ---- (d) withheld, forged or misplaced confirmations ------------------------------------------------
def confirmed(n: int):
    """A round of n past its confirm stage, with each client's honest unmask request."""
    server, clients, directory = masked(n)
    for c in server.cohort:
        server.receive_confirmation(clients[c].confirm(server.survivor_sets()))
    server.close_confirming()
    return server, clients, directory, {c: server.unmask_request(c) for c in server.cohort}


def test_withholding_confirmations_below_the_threshold_gets_no_share():
    # Prepare: five clients, t = 3; a is shown only two of its neighbours' signatures
    server, clients, _, requests = confirmed(5)
    honest = requests["a"]
    withheld = dataclasses.replace(honest, signatures=dict(list(honest.signatures.items())[:2]))
    # Execute / Assert
    with pytest.raises(SecAggError, match="only 2 surviving neighbours signed the survivor sets; 3 must"):
        clients["a"].unmask(withheld)
    assert clients["a"].stage == "aborted"


def test_one_forged_or_stranger_signature_among_valid_ones_is_refused():
    # Prepare: every valid signature is there, plus one that is not
    server, clients, directory, requests = confirmed(5)
    honest = requests["a"]
    flipped = bytes([honest.signatures["b"][0] ^ 1]) + honest.signatures["b"][1:]
    forged = dataclasses.replace(honest, signatures={**honest.signatures, "b": flipped})
    stranger = dataclasses.replace(requests["b"], signatures={**requests["b"].signatures, "zed": bytes(64)})
    # Execute / Assert
    with pytest.raises(SecAggError, match="signature of neighbour b does not verify"):
        clients["a"].unmask(forged)
    with pytest.raises(SecAggError, match="signature of zed, not a surviving neighbour"):
        clients["b"].unmask(stranger)
    # the honest request still unmasks for a client that was not lied to
    assert set(clients["c"].unmask(requests["c"]).seed_shares) == {"a", "b", "d", "e"}


def test_an_unmask_request_that_skips_the_confirm_stage_gets_nothing():
    # Prepare: the server asks for shares right after masking, with no confirmation round
    server, clients, _ = masked(4)
    sets = server.survivor_sets()
    # Execute / Assert
    with pytest.raises(SecAggError, match="at stage 'confirm', not 'unmask'"):
        clients["a"].unmask(UnmaskRequest(1, sets.survivors, sets.dropped, {}))
