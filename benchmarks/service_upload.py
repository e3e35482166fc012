"""Coordinator upload throughput and latency: 100 concurrent clients, 1 MB updates, mTLS on loopback.

What it measures
    The real service path of one upload: TLS (client certificate verified, CN read from the
    peer certificate), the FastAPI route, streaming the body to a staging file while it is
    hashed, parsing and validating the update (shape, finite values), the content-addressed
    blob commit (fsync + rename), the SQLite transaction (synchronous=FULL) and the fold
    into the round's accumulator. Each round, every client uploads at once; the round
    closes (and a version is committed) when the last one is accepted. Reported: updates
    accepted per second over the upload phases, and the p50 / p99 upload latency seen by
    the clients.

The baseline
    A bare ASGI app under the same uvicorn with the same mutual TLS and the same protocol
    class, which reads each body and discards it: what moving 1 MB over loopback TLS in
    Python costs before fedlm does anything. Both servers run in their own process; the
    load generator (asyncio + httpx, one TLS connection per client) shares the machine's
    cores with them, so absolute figures understate a dedicated server.

Certificates, TLS contexts and the baseline app are shared with benchmarks/service_load.py
(benchmarks/service_harness.py).

How to run
    python benchmarks/service_upload.py                 # 100 clients x 1 MB x 3 rounds
    python benchmarks/service_upload.py --clients 20 --rounds 2 --mb 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from service_harness import client_context, discard_app, free_port, make_certificates


def serve(role: str, root: Path, port: int, size: int, clients: int, rounds: int) -> None:
    import uvicorn

    from fedlm.config import RunConfig, apply_overrides
    from fedlm.service.app import create_app
    from fedlm.service.blobs import BlobStore
    from fedlm.service.certs import ClientVerifier
    from fedlm.service.coordinator import Coordinator
    from fedlm.service.runtime import Runtime, uvicorn_config
    from fedlm.service.settings import settings_from_dict
    from fedlm.service.store import Store
    from fedlm.updates.pipeline import fedavg_pipeline

    settings = settings_from_dict({"server": {"port": port, "data_dir": "state", "max_upload_bytes": 8 * size + 1024},
                                   "scheduling": {"deadline_seconds": 3600}}, root=root)
    run = apply_overrides(RunConfig(), {"federation": {"rounds": rounds, "clients_per_round": clients}})
    if role == "baseline":
        app = discard_app
    else:
        settings.data_dir.mkdir(exist_ok=True)
        coordinator = Coordinator(Store(settings.database_url), BlobStore(settings.data_dir / "blobs"), run=run,
                                  pipeline=fedavg_pipeline(), initial_global=np.zeros(size, np.float32),
                                  scheduling=settings.scheduling, registry=settings.registry)
        app = create_app(coordinator, ClientVerifier(root / "certs" / "ca.pem", root / "certs" / "crl.pem"),
                         max_upload_bytes=settings.server.max_upload_bytes, population=clients)
    config = uvicorn_config(Runtime(settings, run, None, app, None))
    uvicorn.Server(config).run()


async def run_load(root: Path, port: int, *, names: list[str], body: bytes, rounds: int, coordinator: bool) -> dict:
    import httpx

    base = f"https://127.0.0.1:{port}"
    sessions = [httpx.AsyncClient(base_url=base, verify=client_context(root, n), timeout=300) for n in names]
    latencies, upload_seconds, accepted = [], 0.0, 0
    try:
        if coordinator:
            await asyncio.gather(*(s.post("/v1/clients/register", json={}) for s in sessions))
        for round in range(1, rounds + 1):
            if coordinator:
                await asyncio.gather(*(s.post("/v1/tasks/next", json={}) for s in sessions))  # the last one opens it
                tasks = await asyncio.gather(*(s.post("/v1/tasks/next", json={}) for s in sessions))
                assert all(t.json()["task"]["round"] == round for t in tasks), "every client should hold a task"

            async def one(session: httpx.AsyncClient) -> int:
                started = time.perf_counter()
                response = await session.post(f"/v1/rounds/{round}/updates", params={"version": round - 1, "num_samples": 1},
                                              content=body, headers={"Content-Type": "application/octet-stream"})
                latencies.append(time.perf_counter() - started)
                return response.status_code

            started = time.perf_counter()
            codes = await asyncio.gather(*(one(s) for s in sessions))
            upload_seconds += time.perf_counter() - started
            accepted += sum(c == 200 for c in codes)
            assert all(c == 200 for c in codes), sorted(set(codes))
    finally:
        await asyncio.gather(*(s.aclose() for s in sessions))
    ms = np.array(latencies) * 1000
    return {"accepted_per_s": accepted / upload_seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "uploads": accepted}


def measure(role: str, root: Path, args: argparse.Namespace, names: list[str], body: bytes, size: int) -> dict:
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--role", role, "--dir", str(root), "--port", str(port),
                               "--size", str(size), "--clients", str(args.clients), "--rounds", str(args.rounds)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"https://127.0.0.1:{port}/v1/health", verify=client_context(root, names[0]), timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return asyncio.run(run_load(root, port, names=names, body=body, rounds=args.rounds, coordinator=role == "service"))
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--mb", type=float, default=1.0, help="update size in MB (float32 values)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", choices=["service", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        serve(args.role, args.dir, args.port, args.size, args.clients, args.rounds)
        return
    from fedlm.updates import wire

    size = int(args.mb * 2**20) // 4
    body = wire.serialize_dense(np.random.default_rng(0).standard_normal(size).astype(np.float32) * 1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"bench-{i:03d}" for i in range(args.clients)]
        make_certificates(root, names)
        results = {role: measure(role, root, args, names, body, size) for role in ("baseline", "service")}
    results["setup"] = {"clients": args.clients, "update_bytes": len(body), "rounds": args.rounds}
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.clients} concurrent clients, {len(body) / 2**20:.2f} MB updates, {args.rounds} rounds, mTLS on loopback")
    print(f"{'':28}{'accepted/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for role, label in (("baseline", "bare uvicorn (discard body)"), ("service", "fedlm coordinator")):
        r = results[role]
        print(f"{label:28}{r['accepted_per_s']:>12.1f}{r['p50_ms']:>10.0f}{r['p99_ms']:>10.0f}")
    print(f"coordinator / baseline throughput: {results['service']['accepted_per_s'] / results['baseline']['accepted_per_s']:.2f}")


if __name__ == "__main__":
    main()
