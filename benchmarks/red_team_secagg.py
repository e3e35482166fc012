"""An active coordinator against SecAgg+ clients, with a real `fedlm serve` (benchmarks/red_team.py).

Bonawitz et al. 2017 §6: a malicious server swaps a neighbour's key, re-signs one under a CA of its own, shows a
client other survivor sets than the others, lies about who dropped, or withholds the survivors' signatures, to get
both secrets (self-mask seed and masking key) of a client. Four clients run `fedlm join`'s worker loop
(client_worker.take_part, the real SecAgg worker) in threads of this script against a real coordinator over mTLS,
with a stand-in trainer; the victim's connection is a `MaliciousRelay`: in the round an attack names, the
coordinator's answers reach the victim rewritten (or made up from the coordinator's own store), which is all an
active coordinator can do. What the victim released is read from the coordinator's SecAgg log (`secagg_messages`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from red_team_lab import Lab, Row, shorten, verdict, wait_until

CLIENTS = ("c0", "c1", "c2", "c3")
VICTIM, TARGET = "c0", "c1"  # the client lied to, and the neighbour whose secrets the lie is after
STAGES = {"advertise_seconds": 5, "share_seconds": 3, "mask_seconds": 6, "confirm_seconds": 3, "unmask_seconds": 3}


@dataclass(frozen=True)
class Lie:
    number: str
    attack: str
    rewrite: Callable[[int, str, dict], dict | None]  # (round, route, answer) -> the answer the victim gets, or None
    intercept: Callable[[int, str, str], dict | None] | None  # (round, method, route) -> answer made up, never sent on
    released: tuple[str, ...]  # the victim's messages in the SecAgg log once it refused
    reason: str  # what the victim says when it leaves


def b64(data: bytes) -> str:
    from fedlm.service import secagg_codec

    return secagg_codec.b64(data)


def new_public_key() -> bytes:
    from fedlm.secagg import keys

    return keys.public_bytes(keys.new_private_key())


def swapped_key(round: int, route: str, answer: dict) -> dict | None:
    if route != "secagg/neighbour-keys":
        return None
    answer["keys"][TARGET] = {**answer["keys"][TARGET], "mask_public": b64(new_public_key())}
    return answer


def resigned_key(evil_ca: Path) -> Callable[[int, str, dict], dict | None]:
    """The coordinator's own keys for TARGET, certified for TARGET by a CA of its own making."""
    from fedlm.secagg.identity import CertificateSigner, advert_message
    from fedlm.service import certs

    certs.init_ca(evil_ca)
    signer = CertificateSigner.from_files(*certs.issue_client(evil_ca, TARGET))

    def rewrite(round: int, route: str, answer: dict) -> dict | None:
        if route != "secagg/neighbour-keys":
            return None
        cipher, mask = new_public_key(), new_public_key()
        answer["keys"][TARGET] = {"cipher_public": b64(cipher), "mask_public": b64(mask),
                                  "certificate": signer.credential.decode(),
                                  "signature": b64(signer.sign(advert_message(round, TARGET, cipher, mask)))}
        return answer

    return rewrite


def target_dropped(sets: dict) -> dict:
    return {**sets, "survivors": [c for c in sets["survivors"] if c != TARGET],
            "dropped": sorted({*sets["dropped"], TARGET})}


def other_survivor_sets(round: int, route: str, answer: dict) -> dict | None:
    return target_dropped(answer) if route == "secagg/survivors" else None


def lie_about_dropouts(round: int, route: str, answer: dict) -> dict | None:
    return target_dropped(answer) if route == "secagg/unmask-request" else None


def withheld_signatures(round: int, route: str, answer: dict) -> dict | None:
    if route != "secagg/unmask-request":
        return None
    return {**answer, "signatures": dict(list(answer["signatures"].items())[:1])}


def made_up_unmask_request(lab: Lab) -> Callable[[int, str, str], dict | None]:
    """After showing the victim other survivor sets: take its confirmation (never forwarded) and answer its unmask
    request with those sets and the real signatures of its other neighbours, from the coordinator's own store."""
    def intercept(round: int, method: str, route: str) -> dict | None:
        if (method, route) == ("POST", "secagg/confirm"):
            return {"accepted": True}
        if (method, route) != ("GET", "secagg/unmask-request"):
            return None
        others = tuple(c for c in CLIENTS if c not in (VICTIM, TARGET))
        rows = wait_until(lambda: signatures_logged(lab, round, others), 30, "the neighbours' confirmations")
        survivors = [c for c in CLIENTS if c != TARGET]
        return {"round": round, "survivors": survivors, "dropped": [TARGET], "signatures": rows}

    return intercept


def signatures_logged(lab: Lab, round: int, clients: tuple[str, ...]) -> dict[str, str] | None:
    rows = lab.query("SELECT client_id, body FROM secagg_messages WHERE round = :r AND kind = 'confirm'", r=round)
    found = {c: (b if isinstance(b, dict) else json.loads(b))["signature"] for c, b in rows if c in clients}
    return found if len(found) == len(clients) else None


def make_lies(lab: Lab) -> list[Lie]:
    return [
        Lie("S1", f"coordinator swaps {TARGET}'s mask key in what it relays to {VICTIM}", swapped_key, None, ("advert",),
            f"neighbour {TARGET} fails its signature check"),
        Lie("S2", f"coordinator relays {TARGET}'s keys re-signed under a certificate from a CA of its own",
            resigned_key(lab.root / "evil-ca"), None, ("advert",), f"neighbour {TARGET} fails its signature check"),
        Lie("S3", f"coordinator shows {VICTIM} other survivor sets ({TARGET} dropped) than the others, then asks it "
            "to unmask with the others' signatures", other_survivor_sets, made_up_unmask_request(lab),
            ("advert", "shares", "masked"), "does not verify"),
        Lie("S4", f"coordinator's unmask request to {VICTIM} says {TARGET} dropped (all signed that it survived)",
            lie_about_dropouts, None, ("advert", "shares", "masked", "confirm"), "other survivor sets than the ones it signed"),
        Lie("S5", f"coordinator withholds the survivors' signatures from {VICTIM}'s unmask request (shows 1)",
            withheld_signatures, None, ("advert", "shares", "masked", "confirm"), "surviving neighbours signed"),
    ]


def relay_class():
    from fedlm.service.transport import Connection

    class MaliciousRelay(Connection):
        """The victim's connection: in a lie's round the coordinator's answers are rewritten on the way to it."""

        lies: dict[int, Lie] = {}

        def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
            parts = path.strip("/").split("/")
            round = int(parts[2]) if parts[:2] == ["v1", "rounds"] and len(parts) > 3 else 0
            route, lie = "/".join(parts[3:]), self.lies.get(round)
            if lie is not None and lie.intercept is not None:
                made_up = lie.intercept(round, method, route)
                if made_up is not None:
                    return httpx.Response(200, json=made_up, request=httpx.Request(method, path))
            response = super().request(method, path, **kwargs)
            if lie is not None and method == "GET":
                rewritten = lie.rewrite(round, route, response.json())
                if rewritten is not None:
                    return httpx.Response(200, json=rewritten, request=response.request)
            return response

    return MaliciousRelay


class Leaving(logging.Handler):
    """The workers' 'leaving the SecAgg round' lines: (client, round) -> reason."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: dict[tuple[str, int], str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "leaving the SecAgg round" in text:
            words = text.split()  # "client c0 round 3: leaving the SecAgg round: ..."
            self.reasons[(words[1], int(words[3].rstrip(":")))] = text.split("leaving the SecAgg round: ", 1)[1]


def run_workers(lab: Lab, lies: dict[int, Lie]) -> dict[str, Any]:
    """Each client's `take_part` in a thread until the run is finished; what each returned (or raised)."""
    from fedlm.service.client_worker import Connection, JoinSettings, take_part
    from fedlm.service.scheduling import Traits

    outcomes: dict[str, Any] = {}
    relay = relay_class()
    relay.lies = lies

    def train(task: dict, global_vector: np.ndarray):
        return np.full(global_vector.size, 1e-3, np.float32), 1, {"train_loss": 1.0}

    def work(name: str) -> None:
        folder = lab.certs / "clients"
        settings = JoinSettings(server=f"https://127.0.0.1:{lab.port}", data=lab.root, cert=folder / f"{name}.pem",
                                key=folder / f"{name}.key", ca=lab.certs / "ca.pem", crl=lab.certs / "crl.pem",
                                backoff_initial=0.05, backoff_max=0.5, give_up_after=60)
        try:
            conn = (relay if name == VICTIM else Connection)(settings)
            conn.request("POST", "/v1/clients/register", json={})
            outcomes[name] = take_part(conn, name, train, Traits())
        except Exception as err:  # recorded, and the row says so
            outcomes[name] = f"{type(err).__name__}: {err}"

    threads = [threading.Thread(target=work, args=(name,), daemon=True) for name in CLIENTS]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60 * len(lies)
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic()))
    return outcomes


def released_by(lab: Lab, round: int, client: str) -> tuple[str, ...]:
    return tuple(k for (k,) in lab.query("SELECT kind FROM secagg_messages WHERE round = :r AND client_id = :c ORDER BY id",
                                         r=round, c=client))


def round_outcome(lab: Lab, round: int) -> str:
    rows = lab.query("SELECT status, stage FROM rounds WHERE round = :r", r=round)
    versions = lab.query("SELECT version FROM model_versions WHERE round = :r", r=round)
    if not rows:
        return "never opened"
    status, stage = rows[0]
    return f"{status} ({stage})" + (f", v{versions[0][0]}" if versions else ", no version")


def secagg_rows(root: Path) -> list[Row]:
    """Start a SecAgg coordinator of the tiny model with short stage deadlines; run one lie per round."""
    lab = Lab(root, CLIENTS)
    lies = {round: lie for round, lie in enumerate(make_lies(lab), start=1)}
    run = {"model": {"name": "tiny"}, "federation": {"rounds": len(lies), "clients_per_round": len(CLIENTS)},
           "strategy": {"clip_norm": 1.0, "weighting": "uniform"}, "secagg": {"enabled": True}}
    server = lab.serve(lab.write_config("server.toml", run=run, server={}, secagg=STAGES), name="secagg-server")
    handler, join_log = Leaving(), logging.getLogger("fedlm.join")
    join_log.addHandler(handler)
    join_log.propagate = False  # the workers' own lines stay out of the table's output
    try:
        lab.wait_healthy(server)
        outcomes = run_workers(lab, lies)
        rows = []
        for round, lie in lies.items():
            released, said = released_by(lab, round, VICTIM), handler.reasons.get((VICTIM, round), "nothing")
            others = {c: released_by(lab, round, c) for c in CLIENTS if c != VICTIM}
            ok = released == lie.released and lie.reason in said and "unmask" not in released
            rows.append(Row(lie.number, lie.attack, f"{VICTIM} leaves the round: \"{shorten(said, 120)}\"",
                            f"{VICTIM} released only: {', '.join(released) or 'nothing'}; round {round} "
                            f"{round_outcome(lab, round)}; others unmasked: "
                            f"{sum('unmask' in r for r in others.values())}/3",
                            f"{VICTIM} refuses before releasing {'any share' if len(lie.released) == 1 else 'unmask shares'}",
                            verdict(ok)))
        if any(not isinstance(o, int) for o in outcomes.values()):
            rows.append(Row("S*", "the SecAgg workers themselves", json.dumps(outcomes)[:200], "n/a",
                            "every worker ends when the run does", "FAIL"))
        return rows
    finally:
        join_log.removeHandler(handler)
        join_log.propagate = True
        lab.close()
