"""The README's "your own data" walkthrough, timed: five sites' folders to a shared adapter.

Five sites stand in for a hospital network: each is a folder of its own text, in the formats
a user brings (plain text, Markdown, a nested folder), of very unequal sizes (one play, one,
two, three and eight plays of the embedded Shakespeare), so the data are non-IID by site
and one site holds most of the text. The script writes the folders, then runs and times the
walkthrough's commands exactly as a user types them:

    fedlm data check SITES
    fedlm simulate --data SITES --out RUN [--set strategy.max_client_weight=N]
    fedlm export RUN ADAPTER_DIR

and prints each command's wall time and the run's per-site figures. Usage:

    python benchmarks/five_sites.py [--model smollm2|tiny] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fedlm.data.shakespeare import list_plays, parse_play

PLAYS_PER_SITE = (1, 1, 2, 3, 8)  # unequal on purpose: the last site holds most of the text


def play_text(path: Path) -> str:
    """A play's speeches as paragraphs (one speech each), stage directions and markup removed."""
    _, speakers = parse_play(path.read_text(encoding="utf-8"))
    return "\n\n".join(speech for speeches in speakers.values() for speech in speeches)


def write_sites(root: Path) -> dict[str, int]:
    """Five site folders under `root` (bytes written per site); a site's first play in a nested folder as Markdown."""
    plays = list_plays()
    sizes, start = {}, 0
    for index, count in enumerate(PLAYS_PER_SITE):
        site = root / f"site-{'abcde'[index]}"
        chosen = plays[start:start + count]
        start += count
        total = 0
        for number, path in enumerate(chosen):
            target = site / "archive" / f"{path.stem}.md" if number == 0 and count > 1 else site / f"{path.stem}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            text = play_text(path)
            target.write_text(text, encoding="utf-8")
            total += len(text.encode())
        sizes[site.name] = total
    return sizes


def timed(command: list[str]) -> float:
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' (the README's figures) or 'tiny' (a quick check)")
    parser.add_argument("--work", type=Path, default=Path("runs/five-sites"), help="folder for the sites, the run and the adapter")
    parser.add_argument("--max-client-weight", type=float, default=0.0, help="strategy.max_client_weight (0 = no cap)")
    args = parser.parse_args()
    fedlm = str(Path(sys.executable).with_name("fedlm"))
    shutil.rmtree(args.work, ignore_errors=True)
    sites, run, adapter = args.work / "sites", args.work / "run", args.work / "adapter"
    sizes = write_sites(sites)
    print("sites:", ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items()))
    simulate = [fedlm, "simulate", "--data", str(sites), "--out", str(run), "--quiet"]
    if args.model != "smollm2":
        simulate += ["--model", args.model]
    if args.max_client_weight:
        simulate += ["--set", f"strategy.max_client_weight={args.max_client_weight:g}"]
    times = {
        "data check": timed([fedlm, "data", "check", str(sites)]),
        "simulate": timed(simulate),
        "export": timed([fedlm, "export", str(run), str(adapter)]),
    }
    summary = json.loads((run / "summary.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    print("\ncommand      wall time")
    for name, seconds in times.items():
        print(f"{name:<12} {seconds:8.1f} s")
    print(f"\neval mode {summary['eval_mode']}, {summary['population']} sites train, {summary['eval_clients']} scored")
    base, final = summary["base_sites"], summary["final_sites"]
    print("site        base ppl   final ppl")
    for name in sorted(final["by_site"]):
        print(f"{name:<10} {base['by_site'][name]['perplexity']:9.2f} {final['by_site'][name]['perplexity']:11.2f}")
    print(f"mean       {base['mean_perplexity']:9.2f} {final['mean_perplexity']:11.2f}")
    print(f"worst      {base['worst_perplexity']:9.2f} {final['worst_perplexity']:11.2f}  ({final['worst_site']})")
    shares = [round(line["max_client_share"], 3) for line in lines]
    print(f"largest client share of each round's weight: {shares}")


if __name__ == "__main__":
    main()
