"""SecAgg+ rounds end to end in process: exact sums, dropouts, failure, tampering, refusals."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from fedlm.secagg.keys import ShareTampered
from fedlm.secagg.identity import Ed25519Signer, make_directory
from fedlm.secagg.messages import KeysAdvert, MaskedInput, RoundFailed, SecAggError, SurvivorSets
from fedlm.secagg.session import make_server, run_round
from fedlm.secagg.client import SecAggClient

from protocol_parties import honest_clients

SIZE = 300


def rounding_rng(client: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(client.encode()).hexdigest()[:8], 16))


def make_inputs(n: int, size: int = SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"client-{i:03d}": rng.normal(0, 0.05, size).astype(np.float32) for i in range(n)}


def quantized_sum(server, inputs, clients) -> np.ndarray:
    """The reference: plain sum of the clients' encoded inputs, decoded."""
    total = np.zeros(server.size, np.uint32)
    out = np.empty(server.size, np.uint32)
    for c in clients:
        server.encoding.encode(inputs[c], rounding_rng(c), out)
        total += out
    return server.encoding.decode_sum(total)


def run(inputs, *, neighbours=0, drop=None, seed=1):
    server = make_server(1, list(inputs), size=next(iter(inputs.values())).size, neighbours=neighbours,
                         threshold=0.5, bound=1.0, rng=np.random.default_rng(seed))

    def source(client, out):
        out[:] = inputs[client]
        return True

    return server, run_round(server, source, rounding_rng, drop=drop)


@pytest.mark.parametrize("n", [3, 4, 7, 16, 50])
@pytest.mark.parametrize("sparse", [False, True])
def test_decoded_sum_equals_the_plain_sum_of_quantized_inputs(n, sparse):
    inputs = make_inputs(n)
    server, result = run(inputs, neighbours=4 if sparse else 0)
    assert np.array_equal(result.total, quantized_sum(server, inputs, sorted(inputs)))
    assert result.survivors == tuple(sorted(inputs)) and result.dropped == ()
    # and within quantization error of the float sum: n steps of 1/scale at most
    assert np.abs(result.total - sum(inputs.values())).max() <= n / server.encoding.scale + 1e-6


@pytest.mark.parametrize("n, t", [(10, 5), (50, 25)])
@pytest.mark.parametrize("stage", ["advertise", "share", "mask", "confirm", "unmask"])
def test_dropouts_up_to_the_threshold_are_recovered(stage, n, t):
    # complete graph: k = n - 1, t = floor(k / 2) + 1; every stage needs t + 1 answers, so n - t - 1 may drop
    inputs = make_inputs(n)
    dropped = sorted(inputs)[3:3 + n - t - 1]
    server, result = run(inputs, drop={c: stage for c in dropped})
    contributors = [c for c in sorted(inputs) if c not in dropped or stage in ("confirm", "unmask")]
    assert server.threshold == t
    assert result.survivors == tuple(contributors)
    assert np.array_equal(result.total, quantized_sum(server, inputs, contributors))


@pytest.mark.parametrize("n, t", [(10, 5), (50, 25)])
@pytest.mark.parametrize("stage", ["advertise", "share", "mask", "confirm", "unmask"])
def test_one_dropout_past_the_threshold_fails_the_round_cleanly(stage, n, t):
    inputs = make_inputs(n)
    server = make_server(1, list(inputs), size=SIZE, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(1))
    with pytest.raises(RoundFailed):
        run_round(server, lambda c, out: out.fill(0) or True, rounding_rng, drop={c: stage for c in sorted(inputs)[:n - t]})
    assert server.stage == "failed"


def test_a_failed_round_releases_nothing_and_refuses_further_messages():
    inputs = make_inputs(6)
    server = make_server(1, list(inputs), size=SIZE, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(0))
    with pytest.raises(RoundFailed):
        run_round(server, lambda c, out: out.fill(0) or True, rounding_rng, drop={c: "unmask" for c in sorted(inputs)[:3]})
    assert server.stage == "failed"
    with pytest.raises(SecAggError, match="cannot finish"):
        server.finish()


def test_sparse_graph_survives_random_dropouts_or_fails_cleanly():
    inputs = make_inputs(30)
    rng = np.random.default_rng(7)
    outcomes = set()
    for trial in range(4):
        drop = {c: str(rng.choice(["share", "mask", "confirm", "unmask"])) for c in rng.choice(sorted(inputs), 4, replace=False)}
        server = make_server(1, list(inputs), size=SIZE, neighbours=10, threshold=0.5, bound=1.0,
                             rng=np.random.default_rng(trial))
        try:
            result = run_round(server, lambda c, out: out.__setitem__(slice(None), inputs[c]) or True, rounding_rng, drop=drop)
        except RoundFailed:
            assert server.stage == "failed"  # cleanly: no sum can be taken from it
            with pytest.raises(SecAggError):
                server.finish()
            outcomes.add("failed")
            continue
        assert np.array_equal(result.total, quantized_sum(server, inputs, result.survivors))
        outcomes.add("recovered")
    assert "recovered" in outcomes


def test_masked_input_looks_uniform_and_hides_the_input():
    inputs = {c: np.zeros(100_000, np.float32) for c in ("a", "b", "c", "d")}
    server = make_server(1, list(inputs), size=100_000, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(0))
    seen = {}
    receive = server.receive_masked

    def spy(message):
        seen[message.client] = message.vector.copy()
        receive(message)

    server.receive_masked = spy
    result = run_round(server, lambda c, out: out.fill(0) or True, rounding_rng)
    masked = seen["b"]
    encoded_zero = np.empty(100_000, np.uint32)
    server.encoding.encode(inputs["b"], rounding_rng("b"), encoded_zero)  # all 0 or 1
    assert np.mean(masked == encoded_zero) < 0.001
    assert stats.chisquare(np.bincount(masked >> 24, minlength=256)).pvalue > 1e-4
    assert stats.chisquare(np.bincount(masked & 0xFF, minlength=256)).pvalue > 1e-4
    assert stats.kstest(masked / 2**32, "uniform").pvalue > 1e-4
    assert np.abs(result.total).max() < 4 / server.encoding.scale + 1e-9  # yet the sum decodes to ~0


def _setup(n=4):
    inputs = make_inputs(n)
    server = make_server(1, list(inputs), size=SIZE, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(0))
    clients = honest_clients(server)
    for c in server.cohort:
        server.receive_advert(clients[c].advertise())
    server.close_advertising()
    for c in server.cohort:
        server.receive_shares(clients[c].share_keys(server.neighbour_keys(c)))
    server.close_sharing()
    return inputs, server, clients


def test_a_tampered_share_is_detected():
    _, server, clients = _setup()
    a, b = server.cohort[:2]
    box = server.sealed[a].sealed[b]
    server.sealed[a].sealed[b] = box[:-1] + bytes([box[-1] ^ 1])
    with pytest.raises(ShareTampered):
        clients[b].mask_input(server.shares_for(b), np.zeros(SIZE, np.uint32), _stream())
    assert clients[b].stage == "mask"  # nothing changed: it can still be driven (or dropped)


def test_a_share_replayed_to_another_client_is_detected():
    _, server, clients = _setup()
    a, b, c = server.cohort[:3]
    delivery = server.shares_for(c)
    delivery.sealed[a] = server.sealed[a].sealed[b]  # the box sealed for b, handed to c
    with pytest.raises(ShareTampered):
        clients[c].mask_input(delivery, np.zeros(SIZE, np.uint32), _stream())


def _stream():
    from fedlm.secagg.prg import MaskStream
    return MaskStream(SIZE)


def test_a_client_refuses_to_reveal_both_secrets_of_one_client():
    _, server, clients = _setup()
    for c in server.cohort:
        server.receive_masked(clients[c].mask_input(server.shares_for(c), np.zeros(SIZE, np.uint32), _stream()))
    server.close_masking()
    a, b = server.cohort[:2]
    lying = SurvivorSets(1, survivors=server.cohort, dropped=(b,))
    with pytest.raises(SecAggError, match="both survivors and dropped"):
        clients[a].confirm(lying)
    assert clients[a].stage == "aborted"


def test_bad_messages_are_refused_and_leave_the_sum_unchanged():
    inputs, server, clients = _setup()
    a = server.cohort[0]
    good = clients[a].mask_input(server.shares_for(a), np.zeros(SIZE, np.uint32), _stream())
    before = server.total.copy()
    for bad, match in [
        (MaskedInput(a, 2, good.vector), "round 2"),
        (MaskedInput("stranger", 1, good.vector), "not in round"),
        (MaskedInput(a, 1, good.vector.astype(np.int64)), "uint32"),
        (MaskedInput(a, 1, good.vector[:-1]), "uint32 of length"),
        (KeysAdvert(a, 1, b"x" * 32, b"y" * 32, b"c" * 32, b"s" * 64), "stage 'advertise'"),
    ]:
        with pytest.raises(SecAggError, match=match):
            (server.receive_advert if isinstance(bad, KeysAdvert) else server.receive_masked)(bad)
        assert np.array_equal(server.total, before) and server.masked == []
    server.receive_masked(good)
    with pytest.raises(SecAggError, match="already answered"):
        server.receive_masked(good)


def test_a_client_with_too_few_sharing_neighbours_refuses_to_send_its_input():
    # t = 2 of k = 3: shares from one neighbour only would let the server strip the self mask
    _, server, clients = _setup()
    a = server.cohort[0]
    delivery = server.shares_for(a)
    only_one = type(delivery)(delivery.round, dict(list(delivery.sealed.items())[:1]))
    with pytest.raises(SecAggError, match="needed to mask its input"):
        clients[a].mask_input(only_one, np.zeros(SIZE, np.uint32), _stream())
    assert clients[a].stage == "mask"


def test_a_client_offered_too_few_neighbour_keys_sits_the_round_out():
    # one client is handed a single neighbour's keys (t = 5 of k = 9): it cannot share its
    # secrets, so it falls silent; the others never mask with it and their sum is exact
    inputs = make_inputs(10)
    server = make_server(1, list(inputs), size=SIZE, neighbours=0, threshold=0.5, bound=1.0, rng=np.random.default_rng(5))
    lonely = server.cohort[0]
    offer = server.neighbour_keys

    def withheld(client):
        keys = offer(client)
        return type(keys)(keys.round, dict(list(keys.adverts.items())[:1])) if client == lonely else keys

    server.neighbour_keys = withheld

    def source(client, out):
        out[:] = inputs[client]
        return True

    result = run_round(server, source, rounding_rng)
    assert lonely not in server.sealed and result.survivors == server.cohort[1:]
    assert np.array_equal(result.total, quantized_sum(server, inputs, result.survivors))


def test_a_client_refuses_a_threshold_below_a_majority_of_its_neighbours():
    server = make_server(1, ["a", "b", "c", "d", "e"], size=SIZE, neighbours=0, threshold=0.5, bound=1.0,
                         rng=np.random.default_rng(0))
    params = server.parameters("a")
    weak = type(params)(params.round, params.cohort, params.neighbours, 2, params.size, params.encoding)  # 2 of 4
    identity = {"signer": Ed25519Signer.generate(), "verify": make_directory(server.cohort).verify}
    with pytest.raises(SecAggError, match="must be a majority"):
        SecAggClient("a", weak, **identity)
    SecAggClient("a", params, **identity)  # 3 of 4 is fine
