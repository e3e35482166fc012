"""The protocol server's `check_*` methods: they refuse what `receive_*` refuses and change nothing.

Also the two inputs a malicious client could use to break a round after it was accepted:
a low-order public key (every agreement with it fails) and a share that is no field
element (unmasking would raise half-way); both are now refused on receipt.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedlm.secagg import shamir
from fedlm.secagg.messages import KeysAdvert, MaskedInput, SecAggError, SurvivorsSignature, UnmaskShares
from fedlm.secagg.prg import MaskStream
from fedlm.secagg.session import make_server

from protocol_parties import honest_clients

COHORT = ("a", "b", "c", "d")


def server_at_unmask():
    """A round of four at its unmask stage, with the clients' state machines and each one's unmask request."""
    server = make_server(1, COHORT, size=8, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(0))
    clients = honest_clients(server)
    for c in COHORT:
        server.receive_advert(clients[c].advertise())
    server.close_advertising()
    for c in COHORT:
        server.receive_shares(clients[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    for c in COHORT:
        encoded = server.encoding.encode(np.full(8, 0.25, np.float32), np.random.default_rng(1), np.empty(8, np.uint32))
        server.receive_masked(clients[c].mask_input(server.shares_for(c), encoded, MaskStream(8)))
    sets = server.close_masking()
    for c in COHORT:
        server.receive_confirmation(clients[c].confirm(sets))
    server.close_confirming()
    return server, clients, {c: server.unmask_request(c) for c in COHORT}


def state_of(server):
    return (server.stage, dict(server.adverts), dict(server.sealed), list(server.masked), server.total.tobytes(),
            dict(server.confirmations), dict(server.replies))


def test_a_low_order_public_key_is_refused_at_advertising():
    server = make_server(1, COHORT, size=8, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(0))
    good = honest_clients(server)["a"].advertise()
    before = state_of(server)
    for bad in (bytes(32), b"\x01" + bytes(31)):  # the identity and a point of order 4 on Curve25519
        with pytest.raises(SecAggError, match="low-order"):
            server.receive_advert(KeysAdvert("a", 1, good.cipher_public, bad, good.credential, good.signature))
    assert state_of(server) == before
    server.receive_advert(good)
    assert list(server.adverts) == ["a"]


def test_a_share_outside_the_field_is_refused_on_receipt_and_the_round_still_finishes():
    # Prepare
    server, clients, request = server_at_unmask()
    honest = clients["a"].unmask(request["a"])
    bad = UnmaskShares("a", 1, {c: b"\xff" * shamir.SHARE_BYTES for c in honest.seed_shares}, {})
    before = state_of(server)
    # Execute / Assert: refused, nothing changed; the honest replies then unmask the sum
    with pytest.raises(SecAggError, match="malformed share"):
        server.receive_unmask(bad)
    assert state_of(server) == before
    server.receive_unmask(honest)
    for c in COHORT[1:]:
        server.receive_unmask(clients[c].unmask(request[c]))
    total = server.finish()
    assert np.allclose(total, 1.0, atol=1e-6)  # four inputs of 0.25


def test_checks_refuse_what_receive_refuses_and_change_nothing():
    server, clients, request = server_at_unmask()
    snapshot = copy.deepcopy(state_of(server))
    refused = [
        (server.check_advert, KeysAdvert("a", 1, bytes(32), bytes(32), bytes(32), bytes(64))),  # wrong stage
        (server.check_confirmation, SurvivorsSignature("a", 1, bytes(64))),  # wrong stage
        (server.check_masked, MaskedInput("a", 1, np.zeros(8, np.uint32))),  # wrong stage
        (server.check_unmask, UnmaskShares("zed", 1, {}, {})),  # not in the cohort
        (server.check_unmask, UnmaskShares("a", 2, {}, {})),  # wrong round
    ]
    for check, message in refused:
        with pytest.raises(SecAggError):
            check(message)
    reply = clients["b"].unmask(request["b"])
    server.check_unmask(reply)  # accepted, and still not applied
    assert state_of(server) == snapshot
