"""The coordinator under fleet load: 1,000 concurrent light clients completing rounds over mTLS on loopback.

What it measures
    Light protocol clients (no training) speak what `fedlm join` speaks
    (service.client_worker.take_part): register, poll POST /v1/tasks/next (sleeping the
    server's retry_after when there is no task), download the global version, upload an
    update of the run's size, and again until the server says the run is finished. The
    coordinator is built as `fedlm serve` builds it (service.runtime.build_runtime: server.toml
    settings, [limits] as they are, the instance lock, request limits) with the model
    assembly replaced by a zero vector of the update size (benchmarks/service_harness.py);
    federation.clients_per_round = --clients, so a round closes when every client's update
    is in, and a large deadline and staging space. One replica on SQLite, one on PostgreSQL
    (a scratch database on --postgres-url, dropped afterwards), two replicas on PostgreSQL, and
    the baseline below, in one run. Reported per configuration: rounds completed, accepted
    uploads/s (over the whole run, polls and downloads included), p50/p99 latency of uploads
    and of task polls, wall seconds per round, each server process's peak RSS (VmHWM), and
    where the server's time went (benchmarks/server_profile.py: a sampling profile taken
    inside the server process, and the coordinator's lock timed), the servers' CPU seconds per
    accepted upload and, on PostgreSQL, the database's (every postgres process on the machine).

Replicas (--database replicas, --replicas N)
    N coordinators built the same way with server.replica = true (service.replica), each its
    own process and port, over one scratch PostgreSQL database and one data directory; the
    first is started alone until it holds the leader lock, so it opens and closes the rounds.
    Client i talks to replica i mod N only (it is not given the other URLs: nothing fails
    over here), so the clients split evenly; uploads accepted, their latencies, CPU, peak RSS
    and the profile are also reported per replica, with the rounds each one closed.

The baseline
    A bare ASGI app under the same uvicorn with the same mutual TLS and protocol class that
    answers the same protocol from memory (service_harness.BareProtocol: no identity check,
    database, disk or validation): what moving these requests and bytes over loopback TLS in
    Python costs before fedlm does anything.

Bounded memory (--memory)
    Every client holds a task and the global, then all upload a ~2 MB update at once; the
    server's RSS before the uploads and its peak during them (VmHWM, reset just before) are
    set against the 2 GB a server holding every body in memory would need, and the most
    uploads seen in the staging folder at once shows they were all in flight together. One
    server per configuration: the replicas row is not run.

The machine
    The load generator (one asyncio process, one httpx client and TLS connection per client,
    kept alive) shares the cores with the server, so absolute figures understate a dedicated
    server. The script raises its soft limit on open files to the hard limit (each client
    holds a socket; the server's process inherits the raised limit) and prints both.

How to run
    python benchmarks/service_load.py                      # 1,000 clients x 1.8 MB x 3 rounds: baseline, sqlite,
                                                           # postgres, 2 replicas on postgres
    python benchmarks/service_load.py --clients 100 --rounds 2 --mb 0.5 --database sqlite
    python benchmarks/service_load.py --database replicas --replicas 3
    python benchmarks/service_load.py --memory             # 1,000 concurrent 2 MB uploads, peak RSS
    python benchmarks/service_load.py --json               # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from light_clients import Tally, run_clients
from service_harness import (
    LEADS, BareProtocol, ServerProcess, client_context, coordinator_runtime, drop_postgres, free_port, make_certificates,
    raise_open_files_limit, serve_forever, start_servers, uses_postgres_at,
)
from service_meters import Usage, Watcher, round_timeline
from service_load_report import print_load, print_memory

PROFILE_SAVED_EVERY = 1.0  # seconds (server_profile.StackSampler's save_every)
POSTGRES_URL = os.environ.get("FEDLM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def percentile_ms(seconds: list[float], q: float) -> float | None:
    return float(np.percentile(np.array(seconds) * 1000, q)) if seconds else None


def figures(tally: Tally, started: float, *, clients: int, rounds: int, finished: bool) -> dict[str, Any]:
    """The configuration's row: rounds completed (every client's update accepted), throughput, latencies, round walls."""
    complete = [r for r in range(1, rounds + 1) if tally.accepted[r] >= clients]
    ends = [started] + [tally.round_end[r] for r in complete]
    end = max(tally.round_end.values(), default=started)
    accepted = sum(tally.accepted.values())
    return {
        "rounds_completed": len(complete), "finished": finished, "accepted": accepted,
        "accepted_per_s": accepted / (end - started) if end > started else 0.0,
        "upload_p50_ms": percentile_ms(tally.upload_s, 50), "upload_p99_ms": percentile_ms(tally.upload_s, 99),
        "poll_p50_ms": percentile_ms(tally.poll_s, 50), "poll_p99_ms": percentile_ms(tally.poll_s, 99),
        "download_p50_ms": percentile_ms(tally.download_s, 50), "download_p99_ms": percentile_ms(tally.download_s, 99),
        "polls": len(tally.poll_s), "round_wall_s": [b - a for a, b in zip(ends, ends[1:])],
        "retried": dict(tally.retried), "refused": dict(tally.refused), "client_failures": tally.failures[:5],
        "clients_failed": len(tally.failures),
    }


def server_specs(kind: str, root: Path, args: argparse.Namespace, *, size: int, database_url: str = "") -> list[dict[str, Any]]:
    """A configuration's servers: one, or (kind "replicas") --replicas of them on one database and one data directory."""
    body_bytes, store = size * 4 + 64, database_url.split(":")[0] or "sqlite"
    ports: list[int] = []
    while len(ports) < (args.replicas if kind == "replicas" else 1):
        ports += [port for port in [free_port()] if port not in ports]
    return [{"kind": "bare" if kind == "bare" else "service", "replica": kind == "replicas", "root": str(root),
             "port": port, "size": size, "clients": args.clients, "rounds": args.rounds,
             "data_dir": f"state-{kind}-{store}", "database_url": database_url, "deadline_seconds": 3600.0,
             "max_upload_bytes": max(8 * body_bytes, 1024), "max_staging_bytes": max(2 * args.clients * body_bytes, 2**30),
             "profile": str(root / f"profile-{kind}-{store}-{port}.json")} for port in ports]


def role_of(server: ServerProcess) -> str:
    if not server.spec.get("replica"):
        return server.spec["kind"]
    return "leader" if server.logged(LEADS) else "follower"


def server_figures(server: ServerProcess, watcher: Watcher, cpu: tuple[float, float], tally: Tally) -> dict[str, Any]:
    """One server process's own figures: its clients' uploads, its CPU (`cpu`: over the run), memory, log and profile."""
    port = server.spec["port"]
    profile = Path(server.spec["profile"])
    return {"port": port, "role": role_of(server), "cpu_seconds": cpu[0], "event_loop_cpu_seconds": cpu[1],
            "peak_rss_mb": server.peak_kib() / 1024,
            "max_uploads_in_staging": watcher.max_staging if watcher.staging else None, "watcher_ended_by": watcher.ended_by,
            "accepted": tally.accepted_at[port], "upload_p50_ms": percentile_ms(tally.upload_s_at.get(port, []), 50),
            "upload_p99_ms": percentile_ms(tally.upload_s_at.get(port, []), 99),
            "accepted_logged": server.logged("accepted update round="), "rounds_closed": server.logged(" closed ("),
            "profile": json.loads(profile.read_text()) if profile.is_file() else None}


def measure(label: str, specs: list[dict[str, Any]], root: Path, names: list[str], body: bytes, args: argparse.Namespace,
            global_bytes: int) -> dict[str, Any]:
    """One configuration: start its server(s), run every client through the rounds, measure, stop them."""
    servers = start_servers(__file__, specs, root, names[0])
    watchers = [Watcher(server.pid, server.staging()) for server in servers]
    for watcher in watchers:
        watcher.start()
    try:
        usage = Usage(servers, database=bool(specs[0]["database_url"]))
        tally, started, finished = asyncio.run(run_clients(root, [s["port"] for s in specs], names, body,
                                                           global_bytes=global_bytes, timeout=args.timeout))
        usage.stop()
        result = figures(tally, started, clients=args.clients, rounds=args.rounds, finished=finished)
        result["cores_used"], result["server_cpu_ms_per_upload"] = usage.cores(), usage.ms_per(result["accepted"])
        service = specs[0]["kind"] == "service"
        result["server_rounds_done"] = rounds_done(root, specs[-1]["port"], names[0]) if service else None
        time.sleep(PROFILE_SAVED_EVERY + 0.5)  # the servers' last profile saves cover the whole run
        each = [server_figures(s, w, c, tally) for s, w, c in zip(servers, watchers, usage.each, strict=True)]
    finally:
        for watcher in watchers:
            watcher.stopped.set()
        for server in servers:
            server.stop()
    for one, server in zip(each, servers, strict=True):  # what the servers logged up to their stop
        one["errors"] = server.errors()[:60]
    result["servers"] = each
    result["round_timeline"] = round_timeline([s.log_path for s in servers]) if service else None
    result["peak_rss_mb"] = sum(one["peak_rss_mb"] for one in each)  # the servers' peaks added (one: its own)
    result["max_uploads_in_staging"] = sum(one["max_uploads_in_staging"] or 0 for one in each) if service else None
    result["server_errors"] = [line for one in each for line in one["errors"]][:60]
    result["profile"] = each[0]["profile"]
    result["label"] = label
    return result


def rounds_done(root: Path, port: int, name: str) -> int | None:
    import httpx

    try:
        return httpx.get(f"https://127.0.0.1:{port}/v1/status", verify=client_context(root, name), timeout=30).json()["rounds_done"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def serve_main(spec_path: Path) -> None:
    """The server process: the coordinator (with `fedlm serve`'s logging) or the bare baseline."""
    spec = json.loads(spec_path.read_text())
    root, profile = Path(spec["root"]), Path(spec["profile"])
    raise_open_files_limit()
    if spec["kind"] == "bare":
        from fedlm.updates import wire

        app = BareProtocol(clients=spec["clients"], rounds=spec["rounds"],
                           global_body=wire.serialize_dense(np.zeros(spec["size"], np.float32)))
        serve_forever(app, root=root, port=spec["port"], profile_to=profile)
        return
    from fedlm.service.structured_logs import configure_logging

    configure_logging("text")
    runtime = coordinator_runtime(spec)
    serve_forever(runtime.app, root=root, port=spec["port"], runtime=runtime, profile_to=profile)


def measure_memory(kind: str, root: Path, names: list[str], args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    """--memory: one round in which every client uploads its ~2 MB body at the same moment; the server's RSS."""
    from fedlm.updates import wire

    size = (int(args.mb * 2**20) - 64) // 4
    body = wire.serialize_dense(np.random.default_rng(0).standard_normal(size).astype(np.float32) * 1e-3)
    spec, = server_specs(kind, root, argparse.Namespace(**{**vars(args), "rounds": 1}), size=size, database_url=database_url)
    server = ServerProcess(__file__, spec, root, names[0])
    idle_kib = server.rss_kib()
    watcher = Watcher(server.pid, server.staging())
    held, everyone_in, go, before = [0], asyncio.Event(), asyncio.Event(), {}

    async def hold() -> None:
        held[0] += 1
        if held[0] == len(names):
            everyone_in.set()
        await go.wait()

    async def drive() -> tuple[Tally, float, bool]:
        runner = asyncio.ensure_future(run_clients(root, [spec["port"]], names, body, global_bytes=len(body),
                                                   timeout=args.timeout, hold=hold))
        try:
            await asyncio.wait_for(everyone_in.wait(), timeout=args.timeout)
        except TimeoutError:
            before["partial"] = f"only {held[0]} of {len(names)} clients reached the upload"
        before["rss_kib"], before["reset"] = server.rss_kib(), server.reset_peak()
        watcher.start()
        go.set()
        return await runner

    try:
        tally, started, finished = asyncio.run(drive())
        peak_kib = server.peak_kib()
    finally:
        watcher.stopped.set()
        server.stop()
    buffered_all = len(names) * len(body)
    growth = (max(peak_kib, watcher.max_rss_kib) - before["rss_kib"]) * 1024
    return {
        "clients": len(names), "body_bytes": len(body), "accepted": sum(tally.accepted.values()),
        "rss_idle_mb": idle_kib / 1024, "rss_before_mb": before["rss_kib"] / 1024, "peak_rss_mb": peak_kib / 1024, "peak_was_reset": before["reset"],
        "sampled_max_rss_mb": watcher.max_rss_kib / 1024, "growth_mb": growth / 2**20,
        "buffer_everything_mb": buffered_all / 2**20, "growth_over_buffer_everything": growth / buffered_all,
        "max_uploads_in_staging": watcher.max_staging if kind == "service" else None, "finished": finished,
        "partial": before.get("partial"),
        "upload_p50_ms": percentile_ms(tally.upload_s, 50), "upload_p99_ms": percentile_ms(tally.upload_s, 99),
        "retried": dict(tally.retried), "refused": dict(tally.refused), "client_failures": tally.failures[:5],
        "clients_failed": len(tally.failures), "server_errors": server.errors()[:20],
    }


def memory_runs(root: Path, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """--memory for the baseline and each database asked for, one after the other (one server each: no replicas)."""
    import shutil

    results: dict[str, Any] = {"setup": {}}
    for key, label, kind in configurations(args):
        if kind == "replicas":
            continue
        database_url = uses_postgres_at(args.postgres_url) if key == "postgres" else ""
        try:
            results[key] = {"label": label, **measure_memory(kind, root, names, args, database_url)}
        finally:
            for leftover in root.glob("state-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            if database_url:
                drop_postgres(database_url, args.postgres_url)
    return results


def configurations(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(key, label, kind) in the order they run."""
    rows = [("baseline", "bare uvicorn, same mTLS, protocol from memory", "bare")]
    if args.database in ("sqlite", "both", "all"):
        rows.append(("sqlite", "fedlm coordinator, 1 replica, SQLite", "service"))
    if args.database in ("postgres", "both", "all"):
        rows.append(("postgres", "fedlm coordinator, 1 replica, PostgreSQL", "service"))
    if args.database in ("replicas", "all"):
        rows.append(("replicas", f"fedlm coordinators, {args.replicas} replicas, PostgreSQL", "replicas"))
    return rows


def measure_load(root: Path, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import shutil

    from fedlm.updates import wire

    size = int(args.mb * 2**20) // 4
    body = wire.serialize_dense(np.random.default_rng(0).standard_normal(size).astype(np.float32) * 1e-3)
    results: dict[str, Any] = {}
    for key, label, kind in configurations(args):
        database_url = ""
        if kind == "replicas" or key == "postgres":
            try:
                database_url = uses_postgres_at(args.postgres_url)
            except Exception as err:  # noqa: BLE001 - no server, no role: the row says so
                results[key] = {"label": label, "skipped": f"no PostgreSQL at {args.postgres_url} ({type(err).__name__})"}
                continue
        specs = server_specs(kind, root, args, size=size, database_url=database_url)
        try:
            results[key] = measure(label, specs, root, names, body, args, global_bytes=len(body))
        finally:
            shutil.rmtree(root / specs[0]["data_dir"], ignore_errors=True)
            if database_url:
                drop_postgres(database_url, args.postgres_url)
    results["setup"] = {"update_bytes": len(body)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=float, default=None, help="update size in MB (default 1.8, the default run's "
                        "adapter; 2 with --memory)")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both", "replicas", "all"], default="all",
                        help="the coordinator rows beside the baseline: both = sqlite + postgres; replicas = "
                        "--replicas coordinators on one PostgreSQL database; all = the three")
    parser.add_argument("--replicas", type=int, default=2, help="replica processes in the replicas row (default 2)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="a server that allows CREATE DATABASE")
    parser.add_argument("--memory", action="store_true", help="1,000 concurrent ~2 MB uploads: the server's peak RSS")
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds per configuration before it is stopped")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--save", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve)
        return
    args.mb = args.mb if args.mb is not None else (2.0 if args.memory else 1.8)
    soft_before, soft, hard = raise_open_files_limit()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedlm-load-") as tmp:
        root, names = Path(tmp), [f"load-{i:04d}" for i in range(args.clients)]
        started = time.perf_counter()
        make_certificates(root, names)
        cert_seconds = time.perf_counter() - started
        if args.memory:
            results = memory_runs(root, names, args)
        else:
            results = measure_load(root, names, args)
    results["setup"].update({"clients": args.clients, "rounds": args.rounds, "mb": args.mb, "cores": os.cpu_count(),
                             "open_files_limit": {"soft_before": soft_before, "soft": soft, "hard": hard},
                             "certificates_seconds": cert_seconds,
                             "load_before": " ".join(f"{x:.2f}" for x in load_before),
                             "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg())})
    if args.save:
        args.save.write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
        return
    print(f"open files: soft limit {soft} (was {soft_before}; raised to the hard limit, {hard}); {args.clients} client "
          f"certificates issued in {cert_seconds:.1f} s")
    if args.memory:
        print_memory(results, args)
    else:
        print_load(results, args)


if __name__ == "__main__":
    sys.exit(main())
