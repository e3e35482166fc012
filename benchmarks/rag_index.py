"""A client's local index (fedlm.retrieval.index) on the plays: indexing throughput and retrieval latency, beside numpy.

What it measures
    1. Indexing throughput (documents/s), one index per play (a client's collection, its
       speeches): all-MiniLM-L6-v2 embedding + faiss IndexFlatIP.add (what `fedlm rag index`
       does), and IndexFlatIP.add alone.
    2. Retrieval latency per query (p50 / p99 ms, k = 10), one query at a time: faiss
       IndexFlatIP beside a brute-force numpy baseline (matrix-vector product, argpartition,
       then a sort of the k) measured in the same run on the same vectors; also fedlm's
       `search` (its input checks + faiss), faiss on one OpenMP thread (what `fedlm rag
       query` uses), and faiss and numpy with all queries in one batch. On each
       play's index, on the chosen plays pooled into one, and on a synthetic larger
       collection (the pooled vectors tiled with small noise and renormalised: a size the
       plays do not reach, to show where the two part).
    3. Whether faiss and numpy return the same top-10 ids, in order, for every query.
    Queries are the inverse cloze task's: one sentence of a random speech of the play,
    embedded by MiniLM (one query's embedding is timed too, for scale).

Run: `.venv/bin/python benchmarks/rag_index.py [--plays 2 | all | macbeth,hamlet] [--queries 200]
[--scale 50000] [--device cpu] [--json]`. The default (the 2 plays with the fewest speeches,
about 500) runs in under 3 minutes on 2 shared cores, nearly all of it MiniLM embedding;
`--plays all` embeds about 14,000 speeches (half an hour on 2 cores, or `--device cuda`).
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
import torch

from fedlm.data.plays import play_speeches
from fedlm.retrieval.encoder import embed_texts, load_encoder, max_length
from fedlm.retrieval.index import EncoderStamp, index_vectors, search
from fedlm.retrieval.pairs import split_sentences

K = 10
WARMUP = 5
# faiss' OpenMP threads spin for a while after each call; on 2 cores numpy's BLAS threads timed right after faiss
# calls ran 12 ms per 5,000-row query instead of 0.2 ms (measured). Each timed group starts after this pause.
SETTLE = 0.5
# A single query runs faiss' sequential scan inside an OpenMP region of every thread; with the cores shared by other
# processes its barrier cost 45 ms per 50,000-row query against 12 ms on one thread (measured), hence the row below.


def choose_plays(speeches: dict[str, list[str]], choice: str) -> list[str]:
    """'all', a count (the plays with the fewest speeches: the quickest to embed), or comma-separated play ids."""
    if choice == "all":
        return sorted(speeches)
    if choice.isdigit():
        return sorted(sorted(speeches, key=lambda play: (len(speeches[play]), play))[: int(choice)])
    plays = [p.strip() for p in choice.split(",") if p.strip()]
    unknown = [p for p in plays if p not in speeches]
    if unknown:
        raise SystemExit(f"unknown plays {unknown}; known: {', '.join(sorted(speeches))}")
    return plays


def ict_queries(texts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """One sentence of each of `count` random speeches of two sentences or more."""
    usable = [t for t in texts if len(split_sentences(t)) >= 2]
    picks = rng.choice(len(usable), size=min(count, len(usable)), replace=False)
    return [str(rng.choice(split_sentences(usable[i]))) for i in picks]


def numpy_top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The brute-force baseline: cosines of one unit query with every row, the k best by argpartition, sorted."""
    scores = matrix @ query
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return scores[top], top


def numpy_top_k_batch(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ matrix.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, top, axis=1), top


def per_call_ms(call, items) -> np.ndarray:
    """Milliseconds of `call(item)` for each item, after a few warm-up calls."""
    for item in items[:WARMUP]:
        call(item)
    out = np.empty(len(items))
    for i, item in enumerate(items):
        start = time.perf_counter_ns()
        call(item)
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out


def best_of(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def one_thread(measure):
    """`measure()` with faiss on one OpenMP thread (as `fedlm rag query` runs it), then the thread count restored."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return measure()
    finally:
        faiss.omp_set_num_threads(threads)


def p50_p99(ms: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def compare_retrieval(matrix: np.ndarray, queries: np.ndarray) -> dict:
    """Latency of faiss, fedlm's search and numpy on the same vectors, one query at a time and batched; agreement."""
    stamp = EncoderStamp("bench", "-", matrix.shape[1])
    local = index_vectors(matrix, ["."] * len(matrix), stamp, length=1)
    flat = local.index
    rows = [queries[i : i + 1] for i in range(len(queries))]  # [1, dim] each, contiguous
    result = {"documents": int(len(matrix)), "queries": int(len(queries))}
    measures = {  # numpy first; each group after a pause: see SETTLE
        "numpy": lambda: p50_p99(per_call_ms(lambda q: numpy_top_k(matrix, q[0], K), rows)),
        "faiss": lambda: p50_p99(per_call_ms(lambda q: flat.search(q, K), rows)),
        "fedlm_search": lambda: p50_p99(per_call_ms(lambda q: search(local, q, K), rows)),
        "faiss_one_thread": lambda: one_thread(lambda: p50_p99(per_call_ms(lambda q: flat.search(q, K), rows))),
        "numpy_batched_ms_per_query": lambda: 1e3 * best_of(lambda: numpy_top_k_batch(matrix, queries, K)) / len(queries),
        "faiss_batched_ms_per_query": lambda: 1e3 * best_of(lambda: flat.search(queries, K)) / len(queries),
    }
    for name, measure in measures.items():
        time.sleep(SETTLE)
        result[name] = measure()
    faiss_scores, faiss_ids = flat.search(queries, K)
    numpy_pairs = [numpy_top_k(matrix, q, K) for q in queries]
    numpy_ids = np.stack([ids for _, ids in numpy_pairs])
    result["same_top10_in_order"] = int((faiss_ids == numpy_ids).all(axis=1).sum())
    result["same_top10_set"] = int(sum(set(a) == set(b) for a, b in zip(faiss_ids, numpy_ids, strict=True)))
    result["max_score_difference"] = float(np.abs(faiss_scores - np.stack([s for s, _ in numpy_pairs])).max())
    return result


def index_play(encoder, texts: list[str], *, batch_size: int, length: int) -> tuple[np.ndarray, float, float]:
    """The play's document vectors, seconds to embed + add them, and seconds of the faiss add alone (best of 5)."""
    start = time.perf_counter()
    vectors = embed_texts(encoder.model, encoder.tokenizer, texts, length=length, batch_size=batch_size)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    embed_and_add = time.perf_counter() - start

    def add_alone() -> None:
        faiss.IndexFlatIP(vectors.shape[1]).add(vectors)

    return vectors, embed_and_add, best_of(add_alone, repeats=5)


def tiled(matrix: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` unit vectors: copies of `matrix`'s rows plus Gaussian noise (sd 0.02 per coordinate), renormalised."""
    picks = rng.integers(len(matrix), size=rows)
    out = matrix[picks] + rng.normal(0.0, 0.02, size=(rows, matrix.shape[1])).astype(np.float32)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    speeches = play_speeches()
    plays = choose_plays(speeches, args.plays)
    encoder = load_encoder("minilm", device=args.device)
    length = max_length(encoder.tokenizer, encoder.model)
    report = {"plays": plays, "k": K, "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
              "device": args.device, "per_play": [], "embed_seconds": 0.0, "add_seconds": 0.0, "documents": 0}
    pooled_vectors, pooled_queries = [], []
    for play in plays:
        texts = speeches[play]
        vectors, embed_and_add, add_alone = index_play(encoder, texts, batch_size=args.batch_size, length=length)
        queries = embed_texts(encoder.model, encoder.tokenizer, ict_queries(texts, args.queries, rng), length=length)
        report["embed_seconds"] += embed_and_add
        report["add_seconds"] += add_alone
        report["documents"] += len(texts)
        report["per_play"].append({"play": play, **compare_retrieval(vectors, queries)})
        pooled_vectors.append(vectors)
        pooled_queries.append(queries)
        print(f"  {play}: {len(texts)} documents embedded + added in {embed_and_add:.1f} s", flush=True)
    pooled, queries = np.concatenate(pooled_vectors), np.concatenate(pooled_queries)
    report["pooled"] = compare_retrieval(pooled, queries)
    if args.scale:
        report["synthetic"] = compare_retrieval(tiled(pooled, args.scale, rng), queries[: min(len(queries), 200)])
    texts = ict_queries(speeches[plays[0]], 50, rng)
    report["query_embedding_ms"] = p50_p99(per_call_ms(
        lambda text: embed_texts(encoder.model, encoder.tokenizer, [text], length=length), texts))
    return report


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b > 0 else "     -"


def print_latency(label: str, result: dict) -> None:
    numpy_p50 = result["numpy"]["p50"]
    print(f"\n{label}: {result['documents']} documents, {result['queries']} queries")
    print(f"  {'one query at a time':<36}{'p50 ms':>9}{'p99 ms':>9}   numpy p50 / this p50")
    for name, key in (("faiss IndexFlatIP", "faiss"), ("fedlm search (checks + faiss)", "fedlm_search"),
                      ("faiss IndexFlatIP, 1 OpenMP thread", "faiss_one_thread"),
                      ("numpy matvec + argpartition", "numpy")):
        row = result[key]
        print(f"  {name:<36}{row['p50']:9.4f}{row['p99']:9.4f}   {ratio(numpy_p50, row['p50'])}")
    faiss_b, numpy_b = result["faiss_batched_ms_per_query"], result["numpy_batched_ms_per_query"]
    print(f"  {'all queries in one batch, per query':<36}faiss {faiss_b:.4f} ms, numpy {numpy_b:.4f} ms "
          f"(numpy / faiss {ratio(numpy_b, faiss_b).strip()})")
    print(f"  same top-10 ids: {result['same_top10_in_order']}/{result['queries']} in order, "
          f"{result['same_top10_set']}/{result['queries']} as sets; max |cosine difference| "
          f"{result['max_score_difference']:.2e}")


def print_report(report: dict) -> None:
    docs = report["documents"]
    print(f"\nplays: {len(report['plays'])} ({', '.join(report['plays'])}); {docs} documents; k = {report['k']}; "
          f"torch threads {report['torch_threads']}, faiss threads {report['faiss_threads']}, device {report['device']}")
    embed_rate, add_rate = docs / report["embed_seconds"], docs / report["add_seconds"]
    print(f"\n{'indexing throughput':<38}{'documents/s':>14}")
    print(f"  {'MiniLM embedding + faiss add':<36}{embed_rate:14.1f}")
    print(f"  {'faiss IndexFlatIP.add alone':<36}{add_rate:14.0f}   "
          f"({100 * report['add_seconds'] / report['embed_seconds']:.4f} % of indexing time)")
    per_play = report["per_play"]
    summary = {key: {"p50": float(np.median([p[key]["p50"] for p in per_play])),
                     "p99": float(np.median([p[key]["p99"] for p in per_play]))}
               for key in ("faiss", "fedlm_search", "faiss_one_thread", "numpy")}
    for key in ("faiss_batched_ms_per_query", "numpy_batched_ms_per_query"):
        summary[key] = float(np.median([p[key] for p in per_play]))
    for key in ("same_top10_in_order", "same_top10_set", "queries", "documents"):
        summary[key] = int(sum(p[key] for p in per_play))
    summary["max_score_difference"] = max(p["max_score_difference"] for p in per_play)
    print_latency("one index per play (medians over plays; documents and queries summed)", summary)
    print_latency("the plays pooled into one index", report["pooled"])
    if "synthetic" in report:
        print_latency("synthetic: the pooled vectors tiled with noise", report["synthetic"])
    q = report["query_embedding_ms"]
    print(f"\nfor scale, embedding one query with MiniLM: p50 {q['p50']:.1f} ms, p99 {q['p99']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", default="2", help="a count (the plays with the fewest speeches), 'all', or ids")
    parser.add_argument("--queries", type=int, default=200, help="queries per play")
    parser.add_argument("--scale", type=int, default=50_000, help="rows of the synthetic collection (0: none)")
    parser.add_argument("--batch-size", type=int, default=16, help="documents embedded at once")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args()
    started = time.perf_counter()
    report = run(args)
    report["wall_seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
        print(f"\nwall time {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
