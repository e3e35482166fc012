"""The red team's attacks on `fedlm serve` (issue 17), rerun against this build: one table, PASS or FAIL per attack.

What it does
    Starts real `fedlm serve` processes on loopback (the tiny model, a temporary folder, certificates from
    fedlm.service.certs) and attacks them from outside, as the red team did: as cohort members, as clients without
    or with bad certificates, as an operator's second process, by changing files on disk while a server runs or
    between restarts. Each row has the attack, what the server answered, whether any state changed (the store's
    tables but the audit log, row by row; the blobs by content hash, global vectors included; the staging files;
    audit rows added are named apart), the safe behaviour expected and PASS/FAIL against it.

Groups (each its own servers and folder)
    plain      one coordinator, defaults except the request limits below; findings 1, 3, 4, 5, 6, 7, 8, 9, 10 and
               2a (a second serve on the same data directory)
    shared-db  findings 2b, 2c: a second serve with its own data directory over the first's SQLite file
    replicas   findings 2d, 2e: replicas on PostgreSQL (FEDLM_TEST_POSTGRES_URL; skipped where none answers)
    secagg     S1-S5: an active coordinator against SecAgg+ clients (tests/service/test_secagg_active_server.py)

Settings that are not the defaults, so that every attack ends in seconds
    server.read_timeout_seconds = 2, max_body_seconds = 8 (60 while two uploads are held across a second
    serve's start), max_upload_bytes = max_staging_bytes = 64 KiB, tick_seconds = 0.2; [limits] as they are.

How to run
    python benchmarks/red_team.py                    # every group: 40 attacks, 3.5 to 4.5 minutes on 2 shared cores
    python benchmarks/red_team.py --quick            # the plain group without restarts or second processes (~40 s)
    python benchmarks/red_team.py --only secagg --json red-team.json
Exits 1 when a row FAILs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from red_team_lab import Lab, Row, free_port  # noqa: E402
from red_team_restarts import replicas, shared_sqlite, tampered_round  # noqa: E402
from red_team_secagg import secagg_rows  # noqa: E402
from red_team_trust import (  # noqa: E402
    after_the_last_round, api_description, auth_trail_rows, codes_documented, crl_rows, flipped_global,
    join_with_expired_certificate, long_client_ids,
)
from red_team_uploads import (  # noqa: E402
    MAX_UPLOAD, Limits, OpenRound, body_dripped, body_stalled, dense, disconnect_mid_upload, free_text_metric,
    head_dripped, honest_update, huge_json_declared, metrics_header, one_member_wrecks_the_model, open_round, safetensors_metadata,
    second_concurrent_upload, second_serves, staging_exhausted, upload,
)

REPO = Path(__file__).resolve().parents[1]
COHORT = ("alice", "bob", "mallory", "carol")
ATTACKER = "mallory"
NESTED = "[" * 2000 + "]" * 2000  # past json's recursion limit, within the header's 4,096 characters
HUGE_INT = '{"steps": 1' + "0" * 999 + "}"  # an integer no float holds
SHORT, HELD = Limits(read_timeout=2.0, max_body=8.0), Limits(read_timeout=2.0, max_body=60.0)


def plain_config(lab: Lab, file_name: str, *, rounds: int, limits: Limits, deadline: float, port: int | None = None) -> Path:
    server = {"read_timeout_seconds": limits.read_timeout, "max_body_seconds": limits.max_body,
              "max_upload_bytes": MAX_UPLOAD, "max_staging_bytes": MAX_UPLOAD, **({"port": port} if port else {})}
    return lab.write_config(file_name, run={"model": {"name": "tiny"},
                                            "federation": {"rounds": rounds, "clients_per_round": len(COHORT)}},
                            server=server, scheduling={"deadline_seconds": deadline})


def attack_round(lab: Lab, server, rnd: OpenRound, limits: Limits, second_configs: dict | None) -> list[Row]:
    """Every attack that needs an open round and a cohort member who has not answered, then finding 1 closes it."""
    from fedlm.service.settings import NORM_BOUND_DEFAULT, WEIGHT_CAP_DEFAULT

    rows = [head_dripped(lab, limits)]
    if second_configs is None:  # quick: the slow bodies here (in the full run, round 1 has them)
        rows += [body_stalled(lab, rnd, "alice", limits), body_dripped(lab, rnd, "alice", limits)]
    rows += [second_concurrent_upload(lab, rnd, "alice"), staging_exhausted(lab, rnd, "alice", "bob"),
             huge_json_declared(lab),
             metrics_header(lab, rnd, "alice", "7a", "nested 2,000 deep", NESTED, "400 bad_metrics"),
             metrics_header(lab, rnd, "alice", "7b", "holding a 1,000-digit integer", HUGE_INT, "400 bad_metrics"),
             disconnect_mid_upload(lab, server, rnd, "alice"),
             free_text_metric(lab, server, rnd, "alice"), safetensors_metadata(lab, server, rnd, "alice")]
    done: tuple[str, ...] = ()
    if second_configs is not None:
        rows += second_serves(lab, server, rnd, second_configs, streaming=("alice", "bob"))
        done = ("alice", "bob")
    left = tuple(n for n in COHORT if n not in done and n != ATTACKER)
    rows.append(one_member_wrecks_the_model(lab, rnd, done, left, ATTACKER, norm_bound=NORM_BOUND_DEFAULT,
                                            weight_cap=WEIGHT_CAP_DEFAULT))
    return rows


def final_round(lab: Lab) -> None:
    rnd = open_round(lab, COHORT)
    for name in COHORT:
        upload(lab, name, rnd, dense(honest_update(name, rnd.number, rnd.size))).raise_for_status()


def after_the_run(lab: Lab, server, *, with_join: bool) -> list[Row]:
    rows = [flipped_global(lab, server, "alice"), *crl_rows(lab, ATTACKER, "alice"),
            *auth_trail_rows(lab, server, revoked=ATTACKER, observer="alice"), api_description(lab, "alice"),
            long_client_ids(lab)]
    if with_join:
        rows.append(join_with_expired_certificate(lab))  # its certificate comes from auth_trail_rows
    return rows


def plain_rows(root: Path, quick: bool) -> list[Row]:
    lab = Lab(root, COHORT)
    rounds = 2 if quick else 3
    config = plain_config(lab, "server.toml", rounds=rounds, limits=SHORT if quick else HELD, deadline=600)
    rows: list[Row] = []
    try:
        if quick:
            server = lab.serve(config)
            lab.wait_healthy(server)
            seconds = None
        else:  # round 1: damaged blobs across a restart (its slow bodies under the short limits)
            first = lab.serve(plain_config(lab, "server-round1.toml", rounds=rounds, limits=SHORT, deadline=30))
            lab.wait_healthy(first)
            tampered, server = tampered_round(lab, first, config, SHORT, ("mallory", "alice", "bob", "carol"))
            rows += tampered
            other = plain_config(lab, "server-other-port.toml", rounds=rounds, limits=HELD, deadline=600, port=free_port())
            seconds = {"3": ("a second `fedlm serve` with the same server.toml", config),
                       "2a": ("a second `fedlm serve` on the same data_dir and database, another port", other)}
        rows += attack_round(lab, server, open_round(lab, COHORT), SHORT if quick else HELD, seconds)
        final_round(lab)
        rows.append(after_the_last_round(lab, server, rounds, "alice"))
        rows += after_the_run(lab, server, with_join=not quick)
        rows.append(codes_documented(lab))
        return rows
    finally:
        lab.close()


GROUPS = {"plain": plain_rows, "shared-db": lambda root, quick: shared_sqlite(root),
          "replicas": lambda root, quick: replicas(root), "secagg": lambda root, quick: secagg_rows(root)}


def row_order(row: Row) -> tuple:
    match = re.fullmatch(r"([A-Z]*)(\d+)(.*)", row.number)
    prefix, number, rest = match.groups() if match else ("Z", "0", row.number)
    return (prefix, int(number), rest)


def markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| # | attack | what the server answered | state changed? | expected | result |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.number} | {cell(r.attack)} | {cell(r.answer)} | {cell(r.changed)} | {cell(r.expected)} | "
              f"**{r.verdict}** |" for r in rows]
    return "\n".join(lines)


def build_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (with uncommitted changes)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the table (and how it was made) to this JSON file")
    parser.add_argument("--quick", action="store_true", help="the plain group only, without restarts or second processes")
    parser.add_argument("--only", default="", help=f"comma-separated groups of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder ($TMP in the table: logs, stores)")
    args = parser.parse_args(argv)
    groups = [g for g in (args.only.split(",") if args.only else GROUPS) if g]
    groups = ["plain"] if args.quick and not args.only else groups
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    root, started = Path(tempfile.mkdtemp(prefix="fedlm-redteam-")), time.monotonic()
    when, commit = dt.datetime.now(dt.timezone.utc), build_commit()
    rows: list[Row] = []
    try:
        for group in groups:
            print(f"[{time.monotonic() - started:5.0f} s] {group} ...", file=sys.stderr, flush=True)
            rows += GROUPS[group](root / group, args.quick)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = sorted((Row(**{k: v.replace(str(root), "$TMP") for k, v in asdict(r).items()}) for r in rows), key=row_order)
    seconds = time.monotonic() - started
    command = "python benchmarks/red_team.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command.strip()}\n{when:%Y-%m-%d %H:%M} UTC, commit {commit}, {seconds:.0f} s, groups: {', '.join(groups)}\n")
    print(markdown(rows))
    failed = [r.number for r in rows if r.verdict == "FAIL"]
    print(f"\n{len(rows)} attacks: {sum(r.verdict == 'PASS' for r in rows)} PASS, {len(failed)} FAIL"
          f"{' (' + ', '.join(failed) + ')' if failed else ''}, {sum(r.verdict == 'SKIP' for r in rows)} SKIP")
    if args.json:
        args.json.write_text(json.dumps({"command": command.strip(), "date": when.isoformat(timespec="seconds"),
                                         "commit": commit, "seconds": round(seconds, 1), "groups": groups,
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
