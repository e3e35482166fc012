"""`fedlm rag index DIR` and `fedlm rag query INDEX_DIR TEXT`: a client's local index, built and queried on the client.

`index` embeds the client's own documents (a data folder or file as `fedlm join --data` reads
it: paragraphs of .txt/.md, "text" of .jsonl/.csv/.parquet) with the sentence encoder, plus
the federated query-encoder adapter when given, and writes a faiss index beside them
(fedlm.retrieval.index). `query` embeds the query with the same encoder and adapter (an
index built with another one is refused: its vectors would not match), prints the top k
passages with their cosine, and with `--reranker` reorders the top `--candidates` by the
federated cross-encoder (fedlm.retrieval.rerank). Passages are printed on this terminal
only: it is the client's own. Exit code 0 on success, 2 for a bad argument, a refused data
folder, a missing, corrupt or foreign index, or a query past the encoder's limit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    import numpy as np

    from fedlm.models.base import BaseModel

app = typer.Typer(help="Retrieval on a client's own documents: build its local index, query it.", no_args_is_help=True)
status = Console(stderr=True)  # progress and notes; results go to stdout

DEFAULT_INDEX_DIR = ".fedlm-index"  # hidden, so reading DIR again (fedlm join, fedlm rag index) skips it
ADAPTER_HELP = "The federated query-encoder adapter (a PEFT directory: a retrieval run's RUN_DIR/adapter)."


@app.callback()
def rag_group() -> None:
    """Local vector indices over a client's documents (task.kind = 'retrieval' trains their query encoder)."""


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def default_index_dir(documents: Path) -> Path:
    """DIR/.fedlm-index for a folder; a hidden sibling .NAME.fedlm-index for a single file."""
    return documents / DEFAULT_INDEX_DIR if documents.is_dir() else documents.parent / f".{documents.name}{DEFAULT_INDEX_DIR}"


def check_out_dir(documents: Path, out: Path) -> None:
    """Refuse an index inside the documents' folder that a later read would take for documents (not hidden)."""
    try:
        inside = out.resolve().relative_to(documents.resolve())
    except ValueError:
        return
    if not any(part.startswith(".") for part in inside.parts):
        raise ValueError(f"--out {out} is inside {documents}, where the next read of the documents would take its "
                         f"documents.jsonl for documents; use a hidden name ({DEFAULT_INDEX_DIR}) or a folder outside")


def read_documents(path: Path, encoding: str) -> list[str]:
    from fedlm.data.folders import read_client_samples
    from fedlm.data.report import DataRefused

    try:
        return read_client_samples(path, encoding=encoding)
    except DataRefused as err:
        problems = "\n".join(f"  {p}" for p in err.problems)
        raise ValueError(f"{path}: {len(err.problems)} problem(s), nothing was indexed "
                         f"(run `fedlm data check` on it for the whole report):\n{problems}") from None


def embedding_progress() -> Progress:
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=status, transient=False)


@app.command("index")
def index_command(
    path: Path = typer.Argument(..., help="DIR: the client's documents, a folder (every file below it) or one file."),
    out: Path | None = typer.Option(None, "--out", help=f"INDEX_DIR: where to write the index [default: DIR/{DEFAULT_INDEX_DIR}]."),
    encoder: str = typer.Option("minilm", "--encoder", help="The sentence encoder: 'minilm', 'tiny-encoder' or a local directory."),
    adapter: Path | None = typer.Option(None, "--adapter", help=ADAPTER_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index (only once the new one is complete)."),
    encoding: str = typer.Option("utf-8", "--encoding", help="data.encoding: the files' encoding ('cp1252', 'utf-16')."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Documents embedded at once."),
    device: str = typer.Option("cpu", "--device", help="Where the encoder runs: 'cpu', 'cuda', 'mps', 'auto'."),
) -> None:
    """Embed the documents in DIR and write their local index (faiss, exact cosine); the documents stay on this disk."""
    from fedlm.retrieval.index import build_index, check_index_target, load_query_encoder, save_index

    target = out if out is not None else default_index_dir(path)
    started = time.perf_counter()
    try:
        check_out_dir(path, target)
        check_index_target(target, overwrite=overwrite)  # before the slow part
        documents = read_documents(path, encoding)
        model, stamp = load_query_encoder(encoder, adapter_dir=adapter, device=device)
        with embedding_progress() as progress:
            task = progress.add_task("embedding", total=len(documents))
            index = build_index(documents, model, stamp=stamp, batch_size=batch_size,
                                progress=lambda n: progress.advance(task, n))
        save_index(index, target, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as err:
        raise fail(str(err)) from None
    adapter_note = f", adapter {stamp.adapter[:12]}" if stamp.adapter else ""
    typer.echo(f"indexed {index.count} documents (dim {index.dim}, encoder {stamp.name}{adapter_note}) "
               f"in {time.perf_counter() - started:.1f} s: {target}")
    if index.truncated:
        typer.echo(f"note: {index.truncated} documents are longer than {index.length} tokens and were embedded "
                   "from their first tokens only")


def check_query(text: str, model: BaseModel) -> None:
    """Refuse a blank query or one past the encoder's limit (the encoder would silently cut it)."""
    from fedlm.retrieval.encoder import max_length, token_counts

    if not text.strip():
        raise ValueError("the query is empty")
    limit, tokens = max_length(model.tokenizer, model.model), token_counts(model.tokenizer, [text])[0]
    if tokens > limit:
        raise ValueError(f"the query is {tokens} tokens long, past the limit of {limit} tokens of the encoder "
                         f"{model.name!r}: shorten it")


def rerank(reranker: Path, text: str, passages: list[str], device: str) -> np.ndarray:
    """The federated cross-encoder's scores of (query, passage) for each candidate passage."""
    from fedlm.retrieval.encoder import max_length
    from fedlm.retrieval.rerank import load_reranker, rerank_scores

    loaded = load_reranker(reranker, device=device)
    return rerank_scores(loaded.model, loaded.tokenizer, text, passages,
                         length=max_length(loaded.tokenizer, loaded.model), batch_size=32)


def ranked_hits(index_dir: Path, text: str, *, k: int, adapter: Path | None, reranker: Path | None,
                candidates: int, device: str) -> list[dict]:
    """The top k hits of `text` in the index: id, passage, cosine (and rerank score), best first."""
    import faiss

    from fedlm.retrieval.encoder import embed_texts
    from fedlm.retrieval.index import load_index, load_query_encoder, manifest_stamp, read_manifest, search

    built = manifest_stamp(read_manifest(index_dir))  # a missing or foreign index fails before the encoder loads
    model, stamp = load_query_encoder(built.name, adapter_dir=adapter, device=device)
    check_query(text, model)
    index = load_index(index_dir, encoder=stamp)
    vector = embed_texts(model.model, model.tokenizer, [text], length=index.length)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query scans on one thread anyway; more only add barriers (benchmarks/rag_index.py)
    try:
        scores, ids = search(index, vector, max(k, candidates) if reranker is not None else k)
    finally:
        faiss.omp_set_num_threads(threads)
    hits = [{"id": int(i), "cosine": float(s), "text": index.documents[i]} for s, i in zip(scores[0], ids[0], strict=True)]
    if reranker is not None:
        for hit, score in zip(hits, rerank(reranker, text, [h["text"] for h in hits], device), strict=True):
            hit["rerank"] = float(score)
        hits.sort(key=lambda hit: -hit["rerank"])  # stable: equal scores keep the cosine order
    return [{"rank": rank, **hit} for rank, hit in enumerate(hits[:k], start=1)]


@app.command("query")
def query_command(
    index_dir: Path = typer.Argument(..., help="INDEX_DIR: an index `fedlm rag index` wrote."),
    text: str = typer.Argument(..., help="The query."),
    k: int = typer.Option(10, "--k", min=1, help="How many passages to print."),
    adapter: Path | None = typer.Option(None, "--adapter", help=ADAPTER_HELP + " Must be the one the index was built with."),
    reranker: Path | None = typer.Option(None, "--reranker", help="A federated reranker (a rerank run's RUN_DIR/adapter): "
                                         "reorders the top --candidates passages."),
    candidates: int = typer.Option(20, "--candidates", min=1, help="With --reranker: how many passages it reorders."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of hits."),
    device: str = typer.Option("cpu", "--device", help="Where the encoder runs: 'cpu', 'cuda', 'mps', 'auto'."),
) -> None:
    """Print the passages of INDEX_DIR nearest the query: rank, score and passage (this terminal is the client's)."""
    try:
        hits = ranked_hits(index_dir, text, k=k, adapter=adapter, reranker=reranker, candidates=candidates, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise fail(str(err)) from None
    if as_json:
        typer.echo(json.dumps(hits))
        return
    for hit in hits:
        score = f"{hit['rerank']:8.4f}  (cosine {hit['cosine']:.4f})" if "rerank" in hit else f"{hit['cosine']:.4f}"
        typer.echo(f"{hit['rank']:>3}  {score}  {hit['text']}")
