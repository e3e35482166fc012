"""The printed report of benchmarks/service_load.py: the load table, the server profiles, the memory figures."""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The configurations' results in the order they ran."""
    return [r for key, r in results.items() if key != "setup"]


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_load(results: dict[str, Any], args: argparse.Namespace) -> None:
    setup = results["setup"]
    print(f"{args.clients} concurrent clients, {setup['update_bytes'] / 2**20:.2f} MB updates, {args.rounds} rounds, "
          f"mTLS on loopback; {os.cpu_count()} cores, load average {setup['load_before']} before, {setup['load_after']} after")
    print(f"{'':46}{'rounds':>7}{'upl/s':>8}{'upload p50':>11}{'p99 ms':>8}{'poll p50':>9}{'p99 ms':>8}"
          f"{'s/round':>9}{'peak RSS MB':>12}{'CPU ms/upl':>11}{'+PG ms':>7}{'retries':>8}")
    for r in rows(results):
        if "skipped" in r:
            print(f"{r['label']:46}  skipped: {r['skipped']}")
            continue
        walls = r["round_wall_s"]
        print(f"{r['label']:46}{r['rounds_completed']:>5}/{args.rounds}{r['accepted_per_s']:>8.1f}"
              f"{fmt(r['upload_p50_ms']):>11}{fmt(r['upload_p99_ms']):>8}{fmt(r['poll_p50_ms']):>9}{fmt(r['poll_p99_ms']):>8}"
              f"{fmt(np.mean(walls) if walls else None, 1):>9}{peak_rss_each(r):>12}"
              f"{r['server_cpu_ms_per_upload']['all']:>11.1f}{fmt(r['server_cpu_ms_per_upload'].get('database'), 1):>7}"
              f"{sum(r['retried'].values()):>8}")
    for r in rows(results):
        if "skipped" in r:
            continue
        print(f"\n{r['label']}: {r['polls']} polls, {r['accepted']} uploads accepted, s/round {[round(w, 1) for w in r['round_wall_s']]}"
              + ("" if r["finished"] else f", STOPPED at --timeout {args.timeout:g} s"))
        cores, cpu = r["cores_used"], r["server_cpu_ms_per_upload"]
        database = "" if cores.get("database") is None else f", PostgreSQL {cores['database']:.2f}"
        print(f"  cores used over {cores['wall_seconds']:.0f} s: server{'s' if len(r['servers']) > 1 else ''} "
              f"{cores['server']:.2f} (event loop thread{'s' if len(r['servers']) > 1 else ''} "
              f"{cores['server_event_loop']:.2f}){database}, load generator {cores['load_generator']:.2f}; server CPU "
              f"per accepted upload (its polls, download and upload) {cpu['all']:.1f} ms (event loop "
              f"{cpu['event_loop']:.1f}, other threads {cpu['other_threads']:.1f})"
              + ("" if cpu.get("database") is None else f"; PostgreSQL {cpu['database']:.1f} ms more"))
        if cores.get("machine") is not None:
            print(f"  the machine: {cores['machine']:.2f} of {os.cpu_count()} cores busy, {cores['other_work']:.2f} of them "
                  f"with other work; load average (1 min) {cores['load_average_1min'][0]:.1f} at the start, "
                  f"{cores['load_average_1min'][1]:.1f} at the end")
        if r.get("round_timeline"):
            print("  rounds, from the servers' logs: " + "; ".join(
                f"{t['round']}: open to last upload {fmt(t['collect_s'], 1)} s, close {fmt(t['close_s'], 2)} s, "
                f"next open {fmt(t['open_s'], 2)} s" for t in r["round_timeline"]))
        for server in r["servers"]:
            if len(r["servers"]) > 1:
                print_replica(server, cores["wall_seconds"])
            print_profile(server.get("profile"), indent="    " if len(r["servers"]) > 1 else "  ")
        for what in ("retried", "refused"):
            if r[what]:
                print(f"  {what}: {r[what]}")
        for line in r["client_failures"] + r["server_errors"][:20]:
            print(f"  ! {line}")


def peak_rss_each(r: dict[str, Any]) -> str:
    """The servers' peak RSS in MB, each (a+b for replicas)."""
    return "+".join(f"{server['peak_rss_mb']:.0f}" for server in r["servers"])


def print_replica(server: dict[str, Any], wall: float) -> None:
    print(f"  replica :{server['port']} ({server['role']}): {server['accepted']} uploads accepted "
          f"({server['accepted_logged']} in its log), {server['rounds_closed']} rounds closed, upload p50 "
          f"{fmt(server['upload_p50_ms'])} ms, p99 {fmt(server['upload_p99_ms'])} ms, {server['cpu_seconds'] / wall:.2f} "
          f"cores (event loop {server['event_loop_cpu_seconds'] / wall:.2f}), peak RSS {server['peak_rss_mb']:.0f} MB")


def print_profile(profile: dict[str, dict[str, float]] | None, indent: str = "  ") -> None:
    """The server's sampled time: what the event loop and the worker threads worked on (shares of their working time)."""
    if not profile:
        return
    for role in ("event loop", "worker threads"):
        shares = dict(profile.get(role) or {})
        busy, waiting, pool = shares.pop("busy", 0.0), shares.pop("lock_wait", 0.0), shares.pop("pool_wait", 0.0)
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(shares.items())[:6])
        how = (f"working {busy:.0%} of the time" if role == "event loop" else
               f"{busy:.2f} working, {waiting:.2f} waiting for the coordinator lock and {pool:.2f} for a database "
               "connection on average")
        print(f"{indent}server {role}: {how}" + (f"; of the work: {top}" if top else ""))
    callers = profile.get("database_by_caller")
    if callers:
        print(f"{indent}of the database's samples, by the coordinator functions asking: "
              + ", ".join(f"{name} {share:.0%}" for name, share in list(callers.items())[:6]))
    lock = profile.get("lock")
    if lock:
        callers = ", ".join(f"{name} {c['count']} x {1000 * c['seconds'] / max(c['count'], 1):.1f} ms"
                            for name, c in list(lock["callers"].items())[:5])
        print(f"{indent}coordinator lock held {lock['held_share']:.0%} of {lock['span_seconds']:.0f} s; by caller: {callers}")


def print_memory(results: dict[str, Any], args: argparse.Namespace) -> None:
    for r in rows(results):
        print_memory_row(r)


def print_memory_row(m: dict[str, Any]) -> None:
    print(f"{m['label']}: {m['clients']} concurrent uploads of {m['body_bytes'] / 2**20:.2f} MB (mTLS on loopback)")
    print(f"  server RSS once started         {m['rss_idle_mb']:8.0f} MB")
    print(f"  server RSS before the uploads   {m['rss_before_mb']:8.0f} MB (every client registered and downloaded)")
    print(f"  server peak RSS during them     {m['peak_rss_mb']:8.0f} MB (VmHWM{', reset before' if m['peak_was_reset'] else ''};"
          f" sampled every 50 ms: {m['sampled_max_rss_mb']:.0f} MB)")
    print(f"  growth                          {m['growth_mb']:8.0f} MB")
    print(f"  every body held in memory       {m['buffer_everything_mb']:8.0f} MB")
    print(f"  growth / every body             {m['growth_over_buffer_everything']:8.3f}")
    print(f"  most uploads in staging at once {fmt(m['max_uploads_in_staging']):>8}; accepted {m['accepted']}; "
          f"upload p50 {fmt(m['upload_p50_ms'])} ms, p99 {fmt(m['upload_p99_ms'])} ms")
    for what in ("retried", "refused"):
        if m[what]:
            print(f"  {what}: {m[what]}")
    for line in m["client_failures"] + m["server_errors"][:5]:
        print(f"  ! {line}")
