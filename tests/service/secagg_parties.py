"""SecAgg clients driven through the coordinator's HTTP API in process (a test helper, not a test).

Each Party holds a real SecAggClient (its secrets stay in the test, as in a client
process) and speaks to the real app through its TestClient with a real certificate; it
signs with that certificate's key and checks its neighbours' certificates against the CA
and the CRL, as `fedlm join` does (secagg_worker.identity_from_files).
`reference_global` is what the round must commit: rounds.accept_sum on the plain sum of
the parties' quantized inputs, then the round engine's close.
"""

from __future__ import annotations

import json

import numpy as np

from fedlm.secagg.client import SecAggClient
from fedlm.secagg.prg import MaskStream
from fedlm.server.rounds import accept_sum, close_round, initial_state, open_round
from fedlm.service import certs
from fedlm.service import secagg_codec as codec
from fedlm.service.payloads import masked_payload
from fedlm.service.secagg_worker import identity_from_files

from conftest import INITIAL, pipeline_for

SECURE = {"secagg": {"enabled": True}, "strategy": {"clip_norm": 10.0, "weighting": "uniform"}}
STAGES = ("advertise", "share", "mask", "confirm", "unmask")


def input_of(name: str) -> np.ndarray:
    rng = np.random.default_rng(sum(name.encode()))
    return rng.uniform(-2, 2, INITIAL.size).astype(np.float32)


class Party:
    def __init__(self, service, name: str) -> None:
        self.service, self.name = service, name
        self.task = self.client_state = self.encoded = None
        self.shares = None

    @property
    def http(self):
        return self.service.clients[self.name]  # looked up each time: a restart replaces the app

    def base(self) -> str:
        return f"/v1/rounds/{self.task['round']}/secagg"

    def identity(self):
        folder = self.service.root / "certs"
        return identity_from_files(folder / "clients" / f"{self.name}.pem", folder / "clients" / f"{self.name}.key",
                                   folder / certs.CA_CERT, folder / certs.CRL)

    def poll(self) -> dict | None:
        self.task = self.http.post("/v1/tasks/next", json={}).json()["task"]
        if self.task is not None:
            params = codec.parameters_from_answer(self.task["round"], self.task["secagg"])
            identity = self.identity()
            self.client_state = SecAggClient(self.name, params, signer=identity.signer, verify=identity.verify)
        return self.task

    def advertise(self):
        return self.http.post(f"{self.base()}/keys", json=codec.advert_body(self.client_state.advertise()))

    def share(self):
        keys = self.http.get(f"{self.base()}/neighbour-keys")
        assert keys.status_code == 200, keys.text
        sealed = self.client_state.share_keys(codec.neighbour_keys_from_answer(keys.json()))
        return self.http.post(f"{self.base()}/shares", json=codec.shares_body(sealed))

    def mask(self, metrics=None):
        answer = self.http.get(f"{self.base()}/shares")
        assert answer.status_code == 200, answer.text
        params = self.client_state.params
        self.encoded = params.encoding.encode(input_of(self.name), np.random.default_rng(len(self.name)),
                                              np.empty(params.size, np.uint32)).copy()
        masked = self.client_state.mask_input(codec.shares_for_from_answer(answer.json()), self.encoded.copy(),
                                              MaskStream(params.size))
        return self.upload(masked_payload(masked.vector), metrics or {"train_loss": 1.0 + len(self.name) / 10})

    def upload(self, body: bytes, metrics: dict):
        return self.http.post(f"/v1/rounds/{self.task['round']}/updates", content=body,
                              params={"version": self.task["version"], "num_samples": 1},
                              headers={"X-Fedlm-Metrics": json.dumps(metrics)})

    def confirm(self):
        answer = self.http.get(f"{self.base()}/survivors")
        assert answer.status_code == 200, answer.text
        signed = self.client_state.confirm(codec.survivor_sets_from_answer(answer.json()))
        return self.http.post(f"{self.base()}/confirm", json=codec.confirm_body(signed))

    def unmask(self):
        answer = self.http.get(f"{self.base()}/unmask-request")
        assert answer.status_code == 200, answer.text
        reply = self.client_state.unmask(codec.unmask_request_from_answer(answer.json()))
        return self.http.post(f"{self.base()}/unmask", json=codec.unmask_body(reply))

    def act(self, stage: str):
        return {"advertise": self.advertise, "share": self.share, "mask": self.mask, "confirm": self.confirm,
                "unmask": self.unmask}[stage]()


def open_secure_round(service, names) -> dict[str, Party]:
    for name in names:
        assert service.clients[name].post("/v1/clients/register", json={}).status_code == 200
    parties = {name: Party(service, name) for name in names}
    for party in parties.values():
        assert party.poll() is not None
    return parties


def run_stages(parties: dict[str, Party], stages=STAGES, silent: dict[str, str] | None = None) -> None:
    """Every party answers each stage in turn, except from its `silent` stage on; a stage left open
    by silent parties is closed by its deadline."""
    silent = silent or {}
    service = next(iter(parties.values())).service
    for stage in stages:
        for name, party in parties.items():
            if name not in silent or STAGES.index(stage) < STAGES.index(silent[name]):
                response = party.act(stage)
                assert response.status_code == 200, (stage, name, response.text)
        coordinator = service.coordinator
        if coordinator.secure is not None and coordinator.secure.stage == stage:
            service.clock.now = coordinator.round_row.deadline + 1
            coordinator.tick()


def reference_global(service, parties: dict[str, Party], survivors) -> np.ndarray:
    """accept_sum on the plain sum of the survivors' quantized inputs, closed by the round engine."""
    pipeline = pipeline_for(service.run)
    state = initial_state(INITIAL, pipeline)
    rnd = open_round(state, tuple(sorted(parties)), pipeline)
    total = np.zeros(INITIAL.size, np.uint32)
    for name in survivors:
        total += parties[name].encoded
    params = next(iter(parties.values())).client_state.params
    accept_sum(rnd, params.encoding.decode_sum(total), tuple(sorted(survivors)), {})
    new_state, _ = close_round(state, rnd)
    return new_state.global_vector
