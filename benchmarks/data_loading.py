"""Loading and tokenizing one large client through fedlm, beside reading its files with plain Python.

What it measures
    A client folder of `--mb` MB (default 50) of seeded random words, in `--files` .txt files
    of paragraphs (20 to 120 words each, separated by blank lines), is generated in a
    temporary folder. Each measurement runs in a fresh child process, so that its peak
    resident memory (ru_maxrss of that child, from os.wait4) is its own:

      - plain read: `open(f, encoding="utf-8").read()` of every file, kept in a list: the
        floor of reading the text into memory. THE BASELINE.
      - imports: import fedlm's data and work modules (torch, transformers) and build the
        tiny model's tokenizer, nothing more: the fixed memory every fedlm process pays.
      - scan: `fedlm.data.folders.scan_folder`, what `fedlm data check` does (every file
        decoded, sniffed and split, no sample kept).
      - fedlm: `load_folder` (decode, split into paragraphs, the train/test split) and then
        `CausalLmWork.encode` of the train samples and `pack_texts` of the test samples with
        the tiny model's tokenizer (one token per byte: 50 MB of text is 50 M tokens), which
        is what a simulation does before the client's first round.
      - whole-text packing, before streaming (`--old-mb`, default 5 MB, 0 to skip): the
        reference implementation kept below (every sample tokenized in one call, int64
        blocks), on a smaller client, since on 50 MB it needed about 6 GB.

    MB/s is the client's size in MB (10^6 bytes) over the seconds the child spent on its work
    (imports excluded, and reported apart); ratios are fedlm over the plain read.

Target (from the issue)
    peak RSS of the fedlm child under 1 GB for a 50 MB client with the tiny model.

How to run
    python benchmarks/data_loading.py                 # 50 MB; about 1 to 2 minutes on 2 cores (tokenizing dominates)
    python benchmarks/data_loading.py --mb 5 --old-mb 1   # quick check
    python benchmarks/data_loading.py --json          # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQ_LEN = 128  # data.seq_len's default


def generate_client(folder: Path, *, megabytes: float, files: int, seed: int) -> int:
    """`files` .txt files of seeded random words in paragraphs, about `megabytes` MB in all; the bytes written."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    lengths = rng.integers(2, 11, size=5000)
    vocabulary = ["".join(rng.choice(letters, size=n)) for n in lengths]
    folder.mkdir(parents=True)
    target, written = int(megabytes * 1e6 / files), 0
    for index in range(files):
        paragraphs, size = [], 0
        while size < target:
            words = rng.integers(0, len(vocabulary), size=int(rng.integers(20, 121)))
            paragraph = " ".join(vocabulary[w] for w in words)
            paragraphs.append(paragraph)
            size += len(paragraph) + 2
        data = "\n\n".join(paragraphs).encode("utf-8")
        (folder / f"part-{index:03d}.txt").write_bytes(data)
        written += len(data)
    return written


# --- the children ------------------------------------------------------------------------


def pack_texts_whole(tokenizer, texts, seq_len):
    """pack_texts before streaming: every text tokenized in one call, int64 stream and blocks."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for ids in encoded for t in (*ids, eos)), dtype=np.int64)
    num_blocks = -(-len(stream) // seq_len)
    ids = np.full(num_blocks * seq_len, pad, dtype=np.int64)
    labels = np.full(num_blocks * seq_len, -100, dtype=np.int64)
    ids[: len(stream)] = stream
    labels[: len(stream)] = stream
    return torch.from_numpy(ids.reshape(num_blocks, seq_len)), torch.from_numpy(labels.reshape(num_blocks, seq_len))


def child(mode: str, root: Path) -> dict:
    """Run one measurement in this process; the parent reads its peak RSS."""
    started = time.perf_counter()
    if mode == "read":
        texts = [open(path, encoding="utf-8").read() for path in sorted((root / "site").glob("*.txt"))]  # noqa: SIM115
        return {"work_s": time.perf_counter() - started, "chars": sum(len(t) for t in texts)}
    from fedlm.config import DataSettings, RunConfig
    from fedlm.data.blocks import pack_texts
    from fedlm.data.folders import load_folder, scan_folder
    from fedlm.models.tiny import build_tiny_tokenizer
    from fedlm.work.causal_lm import CausalLmWork

    tokenizer = build_tiny_tokenizer()
    imported = time.perf_counter()
    result: dict = {"import_s": imported - started}
    if mode == "scan":
        report = scan_folder(root)
        result.update(samples=report.samples)
    elif mode == "fedlm":
        client = load_folder(root, seed=0).get("site")
        loaded = time.perf_counter()
        work = CausalLmWork(RunConfig(data=DataSettings(seq_len=SEQ_LEN)))
        train = work.encode(tokenizer, client.train).blocks
        test = pack_texts(tokenizer, client.test, SEQ_LEN)
        result.update(load_s=loaded - imported, tokenize_s=time.perf_counter() - loaded, samples=len(client.train) +
                      len(client.test), train_blocks=len(train), tokens=train.num_tokens + test.num_tokens)
    elif mode == "whole":
        client = load_folder(root, seed=0).get("site")
        ids, _ = pack_texts_whole(tokenizer, client.train, SEQ_LEN)
        result.update(train_blocks=int(ids.shape[0]))
    result["work_s"] = time.perf_counter() - imported if mode != "imports" else None
    return result


def measure(mode: str, root: Path) -> dict:
    """Run `mode` in a fresh child; its result with wall seconds and peak RSS (MB) added."""
    started = time.perf_counter()
    command = [sys.executable, __file__, "--child", mode, str(root)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"the {mode} child failed with exit code {process.returncode}")
    result = json.loads(output)
    result.update(wall_s=time.perf_counter() - started, peak_rss_mb=usage.ru_maxrss / 1024)  # ru_maxrss is in KiB
    return result


# --- the report ------------------------------------------------------------------------------


def run(megabytes: float, files: int, old_megabytes: float, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedlm-data-bench-") as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        size = generate_client(big / "site", megabytes=megabytes, files=files, seed=seed)
        rows = {mode: measure(mode, big) for mode in ("read", "imports", "scan", "fedlm")}
        if old_megabytes > 0:
            old_size = generate_client(small / "site", megabytes=old_megabytes, files=max(1, files // 10), seed=seed)
            rows["whole_small"] = measure("whole", small) | {"megabytes": old_size / 1e6}
            rows["fedlm_small"] = measure("fedlm", small) | {"megabytes": old_size / 1e6}
    for name, row in rows.items():
        row.setdefault("megabytes", size / 1e6)
        row["mb_per_s"] = row["megabytes"] / row["work_s"] if row.get("work_s") else None
    return {"client_mb": size / 1e6, "files": files, "seq_len": SEQ_LEN, "rows": rows}


def print_report(result: dict) -> None:
    rows, base = result["rows"], result["rows"]["read"]
    print(f"client: {result['client_mb']:.1f} MB in {result['files']} .txt files, tiny tokenizer (1 token per byte), "
          f"seq_len {result['seq_len']}")
    print(f"{'measurement':<44} {'MB':>6} {'work s':>8} {'MB/s':>8} {'x read':>7} {'peak RSS MB':>12} {'x read':>7}")
    labels = {"read": "plain read (baseline)", "imports": "fedlm imports + tokenizer only",
              "scan": "fedlm scan_folder (fedlm data check)", "fedlm": "fedlm load + tokenize + pack",
              "whole_small": "whole-text packing, before streaming", "fedlm_small": "fedlm load + tokenize + pack"}
    for name, row in rows.items():
        speed = f"{row['mb_per_s']:8.2f}" if row["mb_per_s"] else f"{'-':>8}"
        ratio = f"{row['mb_per_s'] / base['mb_per_s']:7.3f}" if row["mb_per_s"] else f"{'-':>7}"
        work = f"{row['work_s']:8.2f}" if row["work_s"] is not None else f"{'-':>8}"
        print(f"{labels[name]:<44} {row['megabytes']:6.1f} {work} {speed} {ratio} "
              f"{row['peak_rss_mb']:12.0f} {row['peak_rss_mb'] / base['peak_rss_mb']:7.1f}")
    fedlm = rows["fedlm"]
    print(f"fedlm: load {fedlm['load_s']:.1f} s ({fedlm['megabytes'] / fedlm['load_s']:.1f} MB/s), tokenize and pack "
          f"{fedlm['tokenize_s']:.1f} s ({fedlm['megabytes'] / fedlm['tokenize_s']:.2f} MB/s); "
          f"{fedlm['samples']} samples, "
          f"{fedlm['tokens']} tokens; imports {fedlm['import_s']:.1f} s")
    above = fedlm["peak_rss_mb"] - rows["imports"]["peak_rss_mb"]
    verdict = "under" if fedlm["peak_rss_mb"] < 1024 else "OVER"
    print(f"peak RSS {fedlm['peak_rss_mb']:.0f} MB ({verdict} the 1 GB target), {above:.0f} MB above the imports alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of the generated client in MB")
    parser.add_argument("--files", type=int, default=10, help="number of .txt files it is written in")
    parser.add_argument("--old-mb", type=float, default=5.0, help="client size for the whole-text packing (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    result = run(args.mb, args.files, args.old_mb, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
