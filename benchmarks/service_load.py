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
    (a scratch database on --postgres-url, dropped afterwards), and the baseline below, in
    one run. Reported per configuration: rounds completed, accepted uploads/s (over the whole
    run, polls and downloads included), p50/p99 latency of uploads and of task polls, wall
    seconds per round, the server process's peak RSS (VmHWM), and where the server's time
    went (benchmarks/server_profile.py: a sampling profile taken inside the server process, and
    the coordinator's lock timed), and the server's CPU seconds per accepted upload.

The baseline
    A bare ASGI app under the same uvicorn with the same mutual TLS and protocol class that
    answers the same protocol from memory (service_harness.BareProtocol: no identity check,
    database, disk or validation): what moving these requests and bytes over loopback TLS in
    Python costs before fedlm does anything.

Bounded memory (--memory)
    Every client holds a task and the global, then all upload a ~2 MB update at once; the
    server's RSS before the uploads and its peak during them (VmHWM, reset just before) are
    set against the 2 GB a server holding every body in memory would need, and the most
    uploads seen in the staging folder at once shows they were all in flight together.

The machine
    The load generator (one asyncio process, one httpx client and TLS connection per client,
    kept alive) shares the cores with the server, so absolute figures understate a dedicated
    server. The script raises its soft limit on open files to the hard limit (each client
    holds a socket; the server's process inherits the raised limit) and prints both.

How to run
    python benchmarks/service_load.py                      # 1,000 clients x 1.8 MB x 3 rounds, sqlite + postgres + baseline
    python benchmarks/service_load.py --clients 100 --rounds 2 --mb 0.5 --database sqlite
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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from light_clients import Tally, run_clients
from service_harness import (
    BareProtocol, ServerProcess, client_context, coordinator_runtime, drop_postgres, free_port, make_certificates,
    raise_open_files_limit, serve_forever, status_kib, uses_postgres_at,
)
from service_load_report import print_load, print_memory

PROFILE_SAVED_EVERY = 1.0  # seconds (server_profile.StackSampler's save_every)
POSTGRES_URL = os.environ.get("FEDLM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class Watcher(threading.Thread):
    """From the generator's side, every 50 ms: the server's RSS and the uploads in its staging folder."""

    def __init__(self, pid: int, staging: Path | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.staging, self.stopped = pid, staging, threading.Event()
        self.max_rss_kib, self.max_staging = 0, 0

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            try:
                self.max_rss_kib = max(self.max_rss_kib, status_kib(self.pid, "VmRSS"))
                if self.staging is not None and self.staging.is_dir():
                    self.max_staging = max(self.max_staging, len(os.listdir(self.staging)))
            except (OSError, KeyError):
                return


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


def server_spec(kind: str, root: Path, args: argparse.Namespace, *, size: int, database_url: str = "") -> dict[str, Any]:
    body_bytes = size * 4 + 64
    return {"kind": kind, "root": str(root), "port": free_port(), "size": size, "clients": args.clients,
            "rounds": args.rounds, "data_dir": f"state-{kind}-{database_url.split(':')[0] or 'sqlite'}",
            "database_url": database_url, "deadline_seconds": 3600.0,
            "max_upload_bytes": max(8 * body_bytes, 1024), "max_staging_bytes": max(2 * args.clients * body_bytes, 2**30),
            "profile": str(root / f"profile-{kind}-{database_url.split(':')[0] or 'sqlite'}.json")}


def measure(label: str, spec: dict[str, Any], root: Path, names: list[str], body: bytes, args: argparse.Namespace,
            global_bytes: int) -> dict[str, Any]:
    """One configuration: start its server, run every client through the rounds, measure, stop it."""
    server = ServerProcess(__file__, spec, root, names[0])
    staging = root / spec["data_dir"] / "blobs" / "staging" if spec["kind"] == "service" else None
    watcher = Watcher(server.pid, staging)
    watcher.start()
    try:
        cpu_before, own_before, wall_before = server.cpu(), time.process_time(), time.perf_counter()
        tally, started, finished = asyncio.run(run_clients(root, spec["port"], names, body, global_bytes=global_bytes,
                                                           timeout=args.timeout))
        wall = time.perf_counter() - wall_before
        cpu_after, own = server.cpu(), time.process_time() - own_before
        result = figures(tally, started, clients=args.clients, rounds=args.rounds, finished=finished)
        server_cpu, loop_cpu = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
        result["cores_used"] = {"server": server_cpu / wall, "server_event_loop": loop_cpu / wall,
                                "load_generator": own / wall, "wall_seconds": wall}
        per = max(result["accepted"], 1)  # server CPU per client-round: its poll(s), download and upload
        result["server_cpu_ms_per_upload"] = {"all": 1000 * server_cpu / per, "event_loop": 1000 * loop_cpu / per,
                                              "other_threads": 1000 * (server_cpu - loop_cpu) / per}
        result["server_rounds_done"] = rounds_done(root, spec["port"], names[0]) if spec["kind"] == "service" else None
        result["peak_rss_mb"] = server.peak_kib() / 1024
        result["max_uploads_in_staging"] = watcher.max_staging if staging else None
        time.sleep(PROFILE_SAVED_EVERY + 0.5)  # the server's last profile save covers the whole run
    finally:
        watcher.stopped.set()
        server.stop()
    result["server_errors"] = server.errors()[:20]
    profile = Path(spec["profile"])
    result["profile"] = json.loads(profile.read_text()) if profile.is_file() else None
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
    spec = server_spec(kind, root, argparse.Namespace(**{**vars(args), "rounds": 1}), size=size, database_url=database_url)
    server = ServerProcess(__file__, spec, root, names[0])
    idle_kib = server.rss_kib()
    watcher = Watcher(server.pid, root / spec["data_dir"] / "blobs" / "staging" if kind == "service" else None)
    held, everyone_in, go, before = [0], asyncio.Event(), asyncio.Event(), {}

    async def hold() -> None:
        held[0] += 1
        if held[0] == len(names):
            everyone_in.set()
        await go.wait()

    async def drive() -> tuple[Tally, float, bool]:
        runner = asyncio.ensure_future(run_clients(root, spec["port"], names, body, global_bytes=len(body),
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
    """--memory for the baseline and each database asked for, one after the other."""
    import shutil

    results: dict[str, Any] = {"setup": {}}
    for key, label, kind in configurations(args):
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
    if args.database in ("sqlite", "both"):
        rows.append(("sqlite", "fedlm coordinator, 1 replica, SQLite", "service"))
    if args.database in ("postgres", "both"):
        rows.append(("postgres", "fedlm coordinator, 1 replica, PostgreSQL", "service"))
    return rows


def measure_load(root: Path, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import shutil

    from fedlm.updates import wire

    size = int(args.mb * 2**20) // 4
    body = wire.serialize_dense(np.random.default_rng(0).standard_normal(size).astype(np.float32) * 1e-3)
    results: dict[str, Any] = {}
    for key, label, kind in configurations(args):
        database_url = ""
        if key == "postgres":
            try:
                database_url = uses_postgres_at(args.postgres_url)
            except Exception as err:  # noqa: BLE001 - no server, no role: the row says so
                results[key] = {"label": label, "skipped": f"no PostgreSQL at {args.postgres_url} ({type(err).__name__})"}
                continue
        spec = server_spec(kind, root, args, size=size, database_url=database_url)
        try:
            results[key] = measure(label, spec, root, names, body, args, global_bytes=len(body))
        finally:
            shutil.rmtree(root / spec["data_dir"], ignore_errors=True)
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
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
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
