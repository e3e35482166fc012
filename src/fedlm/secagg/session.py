"""Run one SecAgg+ round in process: the server and client state machines, messages passed as objects.

The simulation, the benchmark and the tests drive the protocol through here; the network
service moves the same messages over HTTP. Clients answer in cohort order and each
masked input is folded before the next client computes its own, so memory holds one
input besides the sum. `drop` makes a client fall silent from a stage on, to exercise
recovery. Seconds per stage are kept for each side.

Each client signs its advert and its confirmation of the survivor sets with an Ed25519
key from a `Directory` made fresh for the round (secagg.identity), which stands in for
the service's certificates: the same protocol, with the same checks, as the service runs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedlm.secagg.client import SecAggClient
from fedlm.secagg.encoding import FixedPoint
from fedlm.secagg.graph import effective_degree, threshold_for
from fedlm.secagg.identity import Directory, make_directory
from fedlm.secagg.keys import ShareTampered
from fedlm.secagg.messages import SecAggError
from fedlm.secagg.prg import MaskStream
from fedlm.secagg.server import SecAggServer

PROTOCOL_STAGES = ("advertise", "share", "mask", "confirm", "unmask")
# fills `out` (float32) with a client's input; returns False when the client fails to produce one
InputSource = Callable[[str, np.ndarray], bool]


@dataclass
class StageClock:
    client: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    server: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def timed(self, side: str, stage: str, action: Callable[[], object]) -> object:
        started = time.perf_counter()
        try:
            return action()
        finally:
            getattr(self, side)[stage] += time.perf_counter() - started


@dataclass(frozen=True)
class SecureSum:
    total: np.ndarray  # float32 sum of the survivors' encoded inputs, decoded
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


def make_server(round: int, cohort: Sequence[str], *, size: int, neighbours: int, threshold: float,
                bound: float, rng: np.random.Generator, step: float = 0.0) -> SecAggServer:
    """A server for `cohort`: k from `neighbours` (0: all), t from the threshold fraction of k."""
    degree = effective_degree(neighbours, len(cohort))
    return SecAggServer(round, cohort, size=size, degree=degree, threshold=threshold_for(degree, threshold),
                        encoding=FixedPoint(bound, len(cohort), step), rng=rng)


def run_round(
    server: SecAggServer,
    source: InputSource,
    rngs: Callable[[str], np.random.Generator],
    *,
    drop: dict[str, str] | None = None,
    clock: StageClock | None = None,
    directory: Directory | None = None,
) -> SecureSum:
    """Drive every stage; raises RoundFailed (nothing released) if too few survive.

    `directory` holds the clients' identity keys (default: a fresh one for this round)."""
    drop, clock = drop or {}, clock or StageClock()
    directory = directory or make_directory(server.cohort)
    silent: set[str] = set()

    def answering(stage: str, among: Sequence[str]) -> list[str]:
        silent.update(c for c in among if drop.get(c) == stage)
        return [c for c in among if c not in silent]

    clients = {c: SecAggClient(c, server.parameters(c), signer=directory.signers[c], verify=directory.verify)
               for c in server.cohort}
    for c in answering("advertise", server.cohort):
        server.receive_advert(clock.timed("client", "advertise", clients[c].advertise))
    clock.timed("server", "advertise", server.close_advertising)
    for c in answering("share", list(server.adverts)):
        try:
            message = clock.timed("client", "share", lambda: clients[c].share_keys(server.neighbour_keys(c)))
        except SecAggError:
            continue  # too few of its neighbours advertised: it cannot share its secrets and sits out
        clock.timed("server", "share", lambda: server.receive_shares(message))
    clock.timed("server", "share", server.close_sharing)
    stream = MaskStream(server.size)
    mask_inputs(server, clients, answering("mask", list(server.sealed)), source, rngs, clock, stream)
    sets = clock.timed("server", "mask", server.close_masking)
    for c in answering("confirm", list(sets.survivors)):
        try:
            signed = clock.timed("client", "confirm", lambda: clients[c].confirm(sets))
        except SecAggError:
            continue  # a client that refuses the sets (too few survivors) sends nothing
        clock.timed("server", "confirm", lambda: server.receive_confirmation(signed))
    clock.timed("server", "confirm", server.close_confirming)
    for c in answering("unmask", list(server.confirmations)):
        try:
            reply = clock.timed("client", "unmask", lambda: clients[c].unmask(server.unmask_request(c)))
        except SecAggError:
            continue  # too few of its neighbours confirmed the sets: it releases nothing
        clock.timed("server", "unmask", lambda: server.receive_unmask(reply))
    total = clock.timed("server", "unmask", lambda: server.finish(stream))
    return SecureSum(total, server.survivors, server.dropped)


def mask_inputs(server: SecAggServer, clients: dict[str, SecAggClient], order: Sequence[str],
                source: InputSource, rngs: Callable[[str], np.random.Generator], clock: StageClock,
                stream: MaskStream) -> None:
    """Each client produces, encodes and masks its input in turn; the server folds it at once."""
    values = np.empty(server.size, np.float32)
    encoded = np.empty(server.size, np.uint32)
    for c in order:
        if not source(c, values):
            continue  # the client failed before its input: it drops out at this stage
        client = clients[c]

        def masked() -> object:
            server.encoding.encode(values, rngs(c), out=encoded)
            return client.mask_input(server.shares_for(c), encoded, stream)

        try:
            message = clock.timed("client", "mask", masked)
        except (SecAggError, ShareTampered):
            continue  # a client that rejects its shares (tampered) stays silent
        clock.timed("server", "mask", lambda: server.receive_masked(message))
