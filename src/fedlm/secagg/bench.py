"""Measure one SecAgg+ round in process on random inputs, beside plain aggregation of the same vectors.

Used by `fedlm bench secagg` and benchmarks/secagg.py. Inputs are drawn per client from
a seeded generator when the protocol asks for them (their drawing is not timed), so
memory holds one input at a time, as in a real round. `dropout` makes that share of the
cohort fall silent after sharing keys, the costly case: the server must recover each
dropped client's masking key and strip its pairwise masks from the sum. The protocol is
the one every round runs, signatures included: each client signs its advert and its
confirmation of the survivor sets and checks its neighbours' (Ed25519 in process), so
the client's `share` and `unmask` seconds include verifying k signatures each, and
`confirm` is the consistency check's stage.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedlm.core.types import Update
from fedlm.secagg.graph import effective_degree
from fedlm.secagg.messages import RoundFailed
from fedlm.secagg.session import PROTOCOL_STAGES, StageClock, make_server, run_round
from fedlm.server.rounds import accept_update, initial_state, open_round
from fedlm.updates.pipeline import fedavg_pipeline

BOUND = 1.0


def _input(seed: int, client: str, out: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([seed, int(client)])
    out[:] = rng.standard_normal(out.size, dtype=np.float32)
    out *= np.float32(0.1)
    return out


def _rounding(seed: int, client: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(client), 1])


def plain_aggregation_seconds(clients: list[str], size: int, seed: int) -> float:
    """Seconds the round engine takes to accept the same float32 vectors without SecAgg
    (validate, then fold into the sum), drawing excluded."""
    state = initial_state(np.zeros(size, np.float32))
    rnd = open_round(state, tuple(clients), fedavg_pipeline(weighting="uniform"))
    values, seconds = np.empty(size, np.float32), 0.0
    for c in clients:
        update = Update(rnd.round, rnd.version, c, 1, _input(seed, c, values))
        started = time.perf_counter()
        accept_update(rnd, update)
        seconds += time.perf_counter() - started
    return seconds


def reference_sum(server: Any, clients: tuple[str, ...], seed: int) -> np.ndarray:
    """The plain sum of the clients' quantized inputs, decoded: what the protocol must return."""
    total, values, encoded = np.zeros(server.size, np.uint32), np.empty(server.size, np.float32), np.empty(server.size, np.uint32)
    for c in clients:
        server.encoding.encode(_input(seed, c, values), _rounding(seed, c), encoded)
        np.add(total, encoded, out=total)
    return server.encoding.decode_sum(total)


def measure(clients: int, params: int, *, neighbours: int = 0, threshold: float = 0.5,
            dropout: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """One round: exactness, seconds per stage for each side, and plain aggregation's seconds."""
    if clients < 3:
        raise ValueError(f"secure aggregation needs at least 3 clients, not {clients}")
    if params < 1:
        raise ValueError(f"params must be >= 1, not {params}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), not {dropout}")
    cohort = [f"{i:06d}" for i in range(clients)]
    rng = np.random.default_rng(seed)
    server = make_server(1, cohort, size=params, neighbours=neighbours, threshold=threshold, bound=BOUND, rng=rng)
    dropped = rng.choice(clients, size=int(round(dropout * clients)), replace=False)
    clock = StageClock()
    started = time.perf_counter()
    try:
        result = run_round(server, lambda c, out: _input(seed, c, out) is not None, lambda c: _rounding(seed, c),
                           drop={cohort[i]: "mask" for i in dropped}, clock=clock)
        failure = None
    except RoundFailed as err:
        result, failure = None, str(err)
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "clients": clients, "params": params, "neighbours": effective_degree(neighbours, clients),
        "threshold": server.threshold, "dropped": len(dropped), "recovered": result is not None,
        "seconds": seconds,
        "client_seconds": {s: clock.client[s] / clients for s in PROTOCOL_STAGES},
        "server_seconds": {s: clock.server[s] for s in PROTOCOL_STAGES},
        "plain_aggregation_seconds": plain_aggregation_seconds(cohort, params, seed),
    }
    if result is None:
        report["failure"] = failure
    else:
        report["exact"] = bool(np.array_equal(result.total, reference_sum(server, result.survivors, seed)))
    report["server_total_seconds"] = sum(report["server_seconds"].values())
    report["server_overhead"] = report["server_total_seconds"] / max(report["plain_aggregation_seconds"], 1e-9)
    return report
