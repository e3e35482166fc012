"""Peer benchmark: fedlm's simulation beside Flower 1.42 and pfl 0.6 on the same trivial workload.

The workload (issue 9): every client receives the global vector of P float32 values and
returns it plus a constant; all N clients take part in every round; the server averages
(FedAvg). Round 1 is a warm-up; the figure is the median seconds per round over the
rest. For each case (N, P), in one run and one after the other:
    - floor: the memory traffic the workload cannot avoid, measured here with NumPy:
      N x P x 4 bytes read and as many written (the constant added in place to each row
      of an [N, P] float32 array); see measure_floor.
    - fedlm: `.venv/bin/fedlm bench sim --clients N --params P --rounds R-1 --json` (its
      --rounds counts the rounds after its own warm-up round), serial executor unless
      --fedlm-executor says otherwise; "missing" when this fedlm has no such command.
    - Flower: flower_workload.py in Flower's own virtual environment (Ray backend, one
      CPU per ClientApp actor: --flower-client-cpus).
    - pfl: pfl_workload.py in pfl's own virtual environment (PyTorch, one torch thread:
      --pfl-torch-threads). Each peer runs at the setting that was fastest here.
Each run has a time limit (--timeout); one that passes it shows "timeout".

The peers' environments are made on first use outside the project's .venv (see
peer_venvs.py): ~/.cache/fedlm/peer-venvs/{flower,pfl}, about 0.5 and 1.1 GB.

How to run (from the repository root):
    .venv/bin/python benchmarks/peers/run.py                    # the four cases, 5 rounds each
    .venv/bin/python benchmarks/peers/run.py --cases 100x1e6 --rounds 3
    .venv/bin/python benchmarks/peers/run.py --json peers.json  # also write the results
Every run's output goes to a log folder (printed at the end). On a shared machine the
figures move with the load; the load average before and after each case is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from peer_venvs import PEERS, default_venv_root, ensure_venv
from results_table import FRAMEWORKS, case_label, render_first_rounds, render_table
from round_timing import read_result

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_CASES = "10x1e6,100x1e5,100x1e6,1000x1e4"
FLOOR_REPEATS = 10
WORKLOADS = {"flower": HERE / "flower_workload.py", "pfl": HERE / "pfl_workload.py"}


def parse_cases(text: str) -> list[tuple[int, int]]:
    """'100x1e6,1000x1e4' -> [(100, 1000000), (1000, 10000)]."""
    cases = []
    for item in text.split(","):
        clients, _, params = item.strip().lower().partition("x")
        try:
            case = (int(float(clients)), int(float(params)))
        except ValueError:
            raise SystemExit(f"bad case {item!r}: write N x P as e.g. 100x1e6") from None
        if min(case) < 1:
            raise SystemExit(f"bad case {item!r}: N and P must be at least 1")
        cases.append(case)
    return cases


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"NxP,... (default {DEFAULT_CASES})")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run incl. 1 warm-up")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="subset to run")
    parser.add_argument("--flower-client-cpus", type=float, default=1.0,
                        help="Ray CPUs per Flower ClientApp (Flower's default 2 = one at a time)")
    parser.add_argument("--pfl-torch-threads", type=int, default=1,
                        help="torch threads in pfl's process (see pfl_workload.py)")
    parser.add_argument("--fedlm", type=Path, default=REPO / ".venv/bin/fedlm", help="fedlm CLI")
    parser.add_argument("--fedlm-executor", help="pass --executor to fedlm bench sim")
    parser.add_argument("--fedlm-workers", type=int, help="pass --workers to fedlm bench sim")
    parser.add_argument("--venvs", type=Path, default=default_venv_root(), help="peer venv root")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    args.cases = parse_cases(args.cases)
    args.frameworks = [name.strip() for name in args.frameworks.split(",") if name.strip()]
    unknown = set(args.frameworks) - set(FRAMEWORKS)
    if unknown or args.rounds < 2 or args.timeout <= 0:
        parser.error(f"frameworks from {FRAMEWORKS}, --rounds >= 2, --timeout > 0 ({unknown or ''})")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_floor(clients: int, params: int, repeats: int) -> dict:
    """The memory-traffic floor: read and write N x P x 4 bytes (N distinct P-vectors).

    Each client's vector is a row of one [N, P] float32 array, and the pass adds the
    constant to every row in place: every byte is read once and written once. Also timed:
    the same N additions into one reused P-vector (in_cache_seconds), the floor of a path
    that reuses one buffer for every client and so stays in cache when P is small.
    """
    rows = np.zeros((clients, params), dtype=np.float32)
    reused = np.empty(params, dtype=np.float32)
    constant = np.float32(1.0)

    def stream_rows() -> None:
        for row in rows:
            np.add(row, constant, out=row)

    def reuse_one() -> None:
        for _ in range(clients):
            np.add(rows[0], constant, out=reused)

    seconds = _median_after_warm_up(stream_rows, repeats)
    bytes_moved = 2 * clients * params * 4
    return {"seconds": seconds, "bytes_moved": bytes_moved, "gb_per_s": bytes_moved / seconds / 1e9,
            "in_cache_seconds": _median_after_warm_up(reuse_one, repeats)}


def _median_after_warm_up(one_pass, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def run_command(command: list[str], timeout: float, log_path: Path) -> tuple[str, dict]:
    """Run a command in its own process group; its stdout, and a status entry."""
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log_file, text=True,
            cwd=HERE, start_new_session=True, env=_clean_env(),
        )
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group: Ray's helpers too
            process.communicate()
            return "", {"status": "timeout", "limit_seconds": timeout, "log": str(log_path)}
        log_file.write("\n--- stdout ---\n" + stdout)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        return stdout, {"status": "failed", "returncode": process.returncode, "log": str(log_path)}
    return stdout, {"status": "ok", "wall_seconds": wall, "log": str(log_path)}


def _clean_env() -> dict[str, str]:
    """This environment without the project venv's markers, so each python is its own."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    return env


def run_peer(name: str, python: Path, case: tuple[int, int], args, log_dir: Path) -> dict:
    clients, params = case
    command = [str(python), str(WORKLOADS[name]), "--clients", str(clients),
               "--params", str(params), "--rounds", str(args.rounds)]
    if name == "flower":
        command += ["--client-cpus", str(args.flower_client_cpus)]
    if name == "pfl":
        command += ["--torch-threads", str(args.pfl_torch_threads)]
    stdout, entry = run_command(command, args.timeout, log_dir / f"{name}-{clients}x{params}.log")
    result = read_result(stdout) if entry["status"] == "ok" else None
    if entry["status"] == "ok" and result is None:
        entry["status"] = "failed"
    return {**(result or {}), **entry}


def fedlm_has_bench_sim(fedlm: Path) -> bool:
    if not fedlm.exists():
        return False
    done = subprocess.run([str(fedlm), "bench", "sim", "--help"], capture_output=True, text=True,
                          check=False, env=_clean_env())
    return done.returncode == 0


def run_fedlm(case: tuple[int, int], args, log_dir: Path) -> dict:
    clients, params = case
    # fedlm's --rounds counts the measured rounds after its warm-up round; ours include it.
    command = [str(args.fedlm), "bench", "sim", "--clients", str(clients), "--params", str(params),
               "--rounds", str(args.rounds - 1), "--json"]
    if args.fedlm_executor:
        command += ["--executor", args.fedlm_executor]
    if args.fedlm_workers:
        command += ["--workers", str(args.fedlm_workers)]
    stdout, entry = run_command(command, args.timeout, log_dir / f"fedlm-{clients}x{params}.log")
    if entry["status"] != "ok":
        return entry
    try:
        result = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        return {**entry, "status": "failed", "error": "no JSON object on stdout"}
    return {**result, **entry}


def run_case(case: tuple[int, int], args, pythons: dict[str, Path], log_dir: Path,
             has_fedlm: bool) -> dict:
    clients, params = case
    row: dict = {"clients": clients, "params": params, "load_before": os.getloadavg()}
    # The floor is cheap: more passes than rounds steady its median on a shared machine.
    row["floor"] = measure_floor(clients, params, repeats=max(args.rounds - 1, FLOOR_REPEATS))
    for name in args.frameworks:
        log(f"  {case_label(clients, params)}: {name} ...")
        if name == "fedlm":
            row[name] = run_fedlm(case, args, log_dir) if has_fedlm else {"status": "missing"}
        else:
            row[name] = run_peer(name, pythons[name], case, args, log_dir)
        entry = row[name]
        figure = entry.get("seconds_per_round_median", entry["status"])
        log(f"  {case_label(clients, params)}: {name} -> {figure}")
    row["load_after"] = os.getloadavg()
    return row


def main() -> int:
    args = parse_args()
    pythons = {name: ensure_venv(args.venvs, PEERS[name], log)
               for name in args.frameworks if name in PEERS}
    has_fedlm = "fedlm" in args.frameworks and fedlm_has_bench_sim(args.fedlm)
    if "fedlm" in args.frameworks and not has_fedlm:
        log(f"fedlm: {args.fedlm} has no `bench sim` command; its column shows 'missing'")
    log_dir = Path(tempfile.mkdtemp(prefix="fedlm-peers-"))
    rows = []
    for case in args.cases:
        log(f"case {case_label(*case)} ({args.rounds} rounds, load {os.getloadavg()[0]:.2f})")
        rows.append(run_case(case, args, pythons, log_dir, has_fedlm))
    print(f"Seconds per round, median of rounds 2..{args.rounds} "
          f"({platform.machine()}, {os.cpu_count()} cores); ratios > 1 mean fedlm is faster.\n")
    print(render_table(rows))
    print("\nFirst (warm-up) round, seconds:\n" + render_first_rounds(rows))
    loads = ", ".join(f"{case_label(r['clients'], r['params'])} {r['load_before'][0]:.2f}->"
                      f"{r['load_after'][0]:.2f}" for r in rows)
    print(f"\nLoad average (1 min) before->after each case: {loads}\nLogs: {log_dir}")
    if args.json:
        report = {"rounds": args.rounds, "cpu_count": os.cpu_count(), "cases": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
