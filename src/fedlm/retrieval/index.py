"""A client's local vector index: exact cosine nearest neighbours over its own documents, kept on its disk.

The documents are embedded by the sentence encoder (fedlm.retrieval.encoder: unit vectors),
so the inner product is the cosine and faiss' `IndexFlatIP` returns the exact k nearest
neighbours (Johnson, Douze & Jégou 2017, "Billion-scale similarity search with GPUs",
arXiv:1702.08734). Why faiss (faiss-cpu): it is well kept (Meta, releases on PyPI for every
platform we run on), its flat index is exact, it has HNSW and IVF indices behind the same
`add`/`search` interface for when a collection outgrows brute force, and it serializes its
own indices (`write_index`/`read_index`, the bytes `serialize_index` gives). Speed is not
the reason at a client's size: benchmarks/rag_index.py measured a query on a play's few
hundred speeches at 0.035 ms with faiss and with a numpy matrix-vector product alike, against
over 100 ms to embed the query with MiniLM; at 50,000 rows faiss on one OpenMP thread was
on par with numpy (18.6 and 16.6 ms on 2 shared cores).

An index is a directory written whole or not at all (fedlm.models.output_dir):

- `index.faiss`: the faiss index (`faiss.read_index` loads it as it is);
- `documents.jsonl`: one {"text": ...} per vector, in id order, so that a query can show
  its passages. They never leave the client: only encoder updates do;
- `manifest.json`: format name and version, the encoder (name, fingerprint of its files,
  fingerprint of the federated adapter it ran with), dim, count, and the sha256 of the two
  files above, so that a corrupt, edited or foreign file is refused by name on load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from fedlm.models.output_dir import check_output_dir, write_output_dir

if TYPE_CHECKING:
    from fedlm.models.base import BaseModel

FORMAT = "fedlm-index"
FORMAT_VERSION = 1
INDEX_FILE, DOCUMENTS_FILE, MANIFEST_FILE = "index.faiss", "documents.jsonl", "manifest.json"
UNIT_TOLERANCE = 1e-3  # |norm - 1| a document vector may be off by (float32 embeddings are within 1e-6)
NOT_FINGERPRINTED = {"README.md"}  # an encoder directory's files that do not change its vectors
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_PLACE_KEYS = {"base_model_name_or_path", "revision", "inference_mode"}  # where it came from, not what it does


@dataclass(frozen=True)
class EncoderStamp:
    """What embedded an index: encoder name, its files' sha256, its output dim, the adapter's sha256 (None: none)."""

    name: str
    fingerprint: str
    dim: int
    adapter: str | None = None


@dataclass(frozen=True, repr=False)
class LocalIndex:
    """A faiss index, the documents its ids stand for, the encoder that embedded them, the token length used."""

    index: faiss.Index
    documents: tuple[str, ...]
    encoder: EncoderStamp
    length: int
    truncated: int = 0  # documents longer than `length` tokens, embedded from their first `length`

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:  # never a document
        return f"LocalIndex(<{self.count} documents, dim {self.dim}>, encoder={self.encoder.name!r})"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoder_fingerprint(path: Path) -> str:
    """sha256 over the names, sizes and bytes of the encoder directory's files (config, tokenizer, weights)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        if file.name.startswith(".") or file.name in NOT_FINGERPRINTED:
            continue
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def adapter_fingerprint(adapter_dir: Path) -> str:
    """sha256 of a PEFT adapter's weights and its config, less the keys that only say where it came from."""
    directory = Path(adapter_dir)
    config_file, weights_file = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for required in (config_file, weights_file):
        if not required.is_file():
            raise ValueError(f"adapter {directory} has no {required.name}: expected a PEFT adapter directory "
                             "(a run's RUN_DIR/adapter, or `fedlm export`)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} is not a PEFT adapter config (not a JSON object)")
    if config.get("task_type") != "FEATURE_EXTRACTION":
        raise ValueError(f"{config_file}: task_type is {config.get('task_type')!r}, not 'FEATURE_EXTRACTION': this "
                         "adapter is no query encoder (train one with task.kind = 'retrieval'; a reranker goes to "
                         "`fedlm rag query --reranker`)")
    behaviour = {key: value for key, value in config.items() if key not in ADAPTER_PLACE_KEYS}
    digest = hashlib.sha256(json.dumps(behaviour, sort_keys=True).encode())
    digest.update(weights_file.read_bytes())
    return digest.hexdigest()


def encoder_dim(model) -> int:
    return int(model.config.hidden_size)


def stamp_name(encoder: BaseModel) -> str:
    """How a query finds the encoder again: "minilm" or "tiny-encoder", else its directory's absolute path."""
    from fedlm.retrieval.encoder import MINILM_NAME, TINY_ENCODER_NAME

    return encoder.name if encoder.name in (MINILM_NAME, TINY_ENCODER_NAME) else str(Path(encoder.path).resolve())


def encoder_stamp(encoder: BaseModel, adapter_dir: Path | None = None) -> EncoderStamp:
    """The stamp of `encoder` (a BaseModel from load_encoder) run with the adapter in `adapter_dir`, if any."""
    adapter = adapter_fingerprint(adapter_dir) if adapter_dir is not None else None
    return EncoderStamp(stamp_name(encoder), encoder_fingerprint(encoder.path), encoder_dim(encoder.model), adapter)


def load_query_encoder(name: str, *, adapter_dir: Path | None = None,
                       device: str = "cpu") -> tuple[BaseModel, EncoderStamp]:
    """The encoder `name` with the federated adapter in `adapter_dir` applied (PEFT), and its stamp."""
    from peft import PeftModel

    from fedlm.models.base import MODEL_BUILDING
    from fedlm.retrieval.encoder import load_encoder

    stamp_adapter = adapter_fingerprint(adapter_dir) if adapter_dir is not None else None  # refuse before loading
    encoder = load_encoder(name, device=device)
    stamp = EncoderStamp(stamp_name(encoder), encoder_fingerprint(encoder.path), encoder_dim(encoder.model), stamp_adapter)
    if adapter_dir is None:
        return encoder, stamp
    try:
        with MODEL_BUILDING:
            model = PeftModel.from_pretrained(encoder.model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"adapter {adapter_dir} does not fit the encoder {name!r}: {str(err).splitlines()[0]}") from None
    model.eval()
    encoder.model = model
    return encoder, stamp


def check_documents(texts: Sequence[str]) -> list[str]:
    """The texts as a list; ValueError for an empty collection or a blank or non-text document (by position)."""
    documents = list(texts)
    if not documents:
        raise ValueError("the collection is empty: there is no document to index")
    for position, text in enumerate(documents):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"document {position} is {'blank' if isinstance(text, str) else 'not text'}: "
                             "every document must hold text")
    return documents


def index_vectors(vectors: np.ndarray, documents: Sequence[str], encoder: EncoderStamp, *, length: int,
                  truncated: int = 0) -> LocalIndex:
    """A flat inner-product index over unit `vectors` [count, dim], row i standing for documents[i]."""
    documents = check_documents(documents)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(documents), encoder.dim):
        raise ValueError(f"expected {len(documents)} vectors of dim {encoder.dim} (one per document), "
                         f"got an array of shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(np.abs(norms - 1.0) > UNIT_TOLERANCE):
        raise ValueError("document vectors must be finite unit vectors (the inner product is then the cosine)")
    index = faiss.IndexFlatIP(encoder.dim)
    index.add(vectors)
    return LocalIndex(index, tuple(documents), encoder, int(length), int(truncated))


def build_index(texts: Sequence[str], encoder: BaseModel, *, stamp: EncoderStamp | None = None, length: int | None = None,
                batch_size: int = 64, progress: Callable[[int], None] | None = None) -> LocalIndex:
    """Embed `texts` with `encoder` (a BaseModel; documents cut at `length` tokens, default the encoder's limit) and
    index them. `stamp` describes the encoder (load_query_encoder gives it; default: `encoder` with no adapter)."""
    from fedlm.retrieval.encoder import embed_texts, max_length, token_counts

    documents = check_documents(texts)
    stamp = stamp if stamp is not None else encoder_stamp(encoder)
    limit = max_length(encoder.tokenizer, encoder.model)
    length = limit if length is None else int(length)
    if not 1 <= length <= limit:
        raise ValueError(f"length must be between 1 and the encoder's limit of {limit} tokens, got {length}")
    truncated = sum(count > length for count in token_counts(encoder.tokenizer, documents))
    vectors = embed_texts(encoder.model, encoder.tokenizer, documents, length=length, batch_size=batch_size,
                          progress=progress)
    return index_vectors(vectors, documents, stamp, length=length, truncated=truncated)


def search(index: LocalIndex, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top min(k, count) documents of each query row [queries, dim]: (cosines, ids), both [queries, k'], best first."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise ValueError(f"query vectors must be [queries, {index.dim}], got shape {queries.shape}")
    if not np.all(np.isfinite(queries)):
        raise ValueError("query vectors must be finite")
    scores, ids = index.index.search(queries, min(int(k), index.count))
    return scores, ids


def is_index_dir(directory: Path) -> bool:
    """Whether `directory` holds a manifest.json of this format (any version): a directory --overwrite may replace."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_index_target(directory: Path, *, overwrite: bool) -> None:
    """Refuse a non-empty `directory` unless `overwrite`, and, even then, one that is not a fedlm index."""
    target = Path(directory)
    check_output_dir(target, overwrite=overwrite)
    if target.is_dir() and any(target.iterdir()) and not is_index_dir(target):
        raise ValueError(f"{target} is not a fedlm index (no {MANIFEST_FILE} of format {FORMAT!r}): "
                         "refusing to replace it; choose another directory")


def make_manifest(index: LocalIndex, files: dict[str, str]) -> dict:
    stamp = index.encoder
    return {"format": FORMAT, "version": FORMAT_VERSION, "metric": "cosine", "faiss": "IndexFlatIP",
            "encoder": {"name": stamp.name, "fingerprint": stamp.fingerprint, "adapter": stamp.adapter},
            "dim": index.dim, "count": index.count, "length": index.length, "truncated": index.truncated,
            "sha256": files}


def save_index(index: LocalIndex, directory: Path, *, overwrite: bool = False) -> Path:
    """Write `index` to `directory` whole or not at all; an existing index is replaced (with `overwrite`) only
    once the new one is complete."""
    target = Path(directory)
    check_index_target(target, overwrite=overwrite)
    index_bytes = faiss.serialize_index(index.index).tobytes()
    documents_bytes = "".join(json.dumps({"text": text}) + "\n" for text in index.documents).encode("ascii")
    files = {INDEX_FILE: sha256_bytes(index_bytes), DOCUMENTS_FILE: sha256_bytes(documents_bytes)}

    def write(tmp: Path) -> None:
        (tmp / INDEX_FILE).write_bytes(index_bytes)
        (tmp / DOCUMENTS_FILE).write_bytes(documents_bytes)
        (tmp / MANIFEST_FILE).write_text(json.dumps(make_manifest(index, files), indent=2) + "\n", encoding="utf-8")

    return write_output_dir(target, write, overwrite=overwrite)


MANIFEST_FIELDS = {"encoder": dict, "dim": int, "count": int, "length": int, "sha256": dict}


def read_manifest(directory: Path) -> dict:
    """The manifest of the index in `directory`; ValueError naming the file for a missing, foreign or newer one."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"no index at {root}: {'it is not a directory' if root.exists() else 'it does not exist'} "
                         "(build one with `fedlm rag index`)")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{root} is not a fedlm index: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is not valid JSON: the index is corrupt or not a fedlm index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fedlm index manifest (its format is not {FORMAT!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest.get('version')!r}; this fedlm reads version "
                         f"{FORMAT_VERSION}: rebuild the index with `fedlm rag index --overwrite`")
    for field, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(field), kind) or isinstance(manifest.get(field), bool):
            raise ValueError(f"{path}: field {field!r} is missing or not a {kind.__name__}: the manifest is corrupt")
    return manifest


def manifest_stamp(manifest: dict) -> EncoderStamp:
    encoder = manifest["encoder"]
    return EncoderStamp(str(encoder.get("name")), str(encoder.get("fingerprint")), manifest["dim"], encoder.get("adapter"))


def check_encoder(directory: Path, built: EncoderStamp, query: EncoderStamp) -> None:
    """Refuse to query an index with an encoder (or adapter) other than the one its documents were embedded with."""
    if built.dim != query.dim:
        raise ValueError(f"{directory} holds vectors of dim {built.dim}, but the encoder {query.name!r} gives dim "
                         f"{query.dim}: query it with the encoder it was built with ({built.name!r})")
    if built.fingerprint != query.fingerprint:
        raise ValueError(f"{directory} was built with another encoder than {query.name!r} (fingerprints differ): "
                         f"its document vectors would not match the query's; rebuild it or query with {built.name!r}")
    if built.adapter != query.adapter:
        built_with = f"adapter {built.adapter[:12]}" if built.adapter else "no adapter"
        query_with = f"adapter {query.adapter[:12]}" if query.adapter else "no adapter"
        raise ValueError(f"{directory} was built with {built_with}, but the query would use {query_with}: "
                         "the document vectors would not match; pass the same --adapter as `fedlm rag index` got, "
                         "or rebuild the index with this one")


def read_checked(directory: Path, name: str, manifest: dict) -> bytes:
    """The bytes of `name` if its sha256 is the manifest's; ValueError naming the file otherwise."""
    path = Path(directory) / name
    if not path.is_file():
        raise ValueError(f"{path} is missing: the index is incomplete; rebuild it")
    data = path.read_bytes()
    if sha256_bytes(data) != manifest["sha256"].get(name):
        raise ValueError(f"{path} does not match the sha256 in {MANIFEST_FILE}: the file is corrupt or was edited; "
                         "rebuild the index with `fedlm rag index --overwrite`")
    return data


def parse_documents(path: Path, data: bytes) -> tuple[str, ...]:
    try:
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is not JSON lines: the index is corrupt") from None
    if not all(isinstance(row, dict) and isinstance(row.get("text"), str) for row in rows):
        raise ValueError(f"{path}: every line must be an object with a \"text\" string: the index is corrupt")
    return tuple(row["text"] for row in rows)


def load_index(directory: Path, *, encoder: EncoderStamp | None = None) -> LocalIndex:
    """The index in `directory`, every file checked against the manifest; with `encoder`, also refused unless its
    documents were embedded by that encoder (same dim, files and adapter). Reads only; changes nothing."""
    root = Path(directory)
    manifest = read_manifest(root)
    built = manifest_stamp(manifest)
    if encoder is not None:
        check_encoder(root, built, encoder)
    index_bytes = read_checked(root, INDEX_FILE, manifest)
    documents = parse_documents(root / DOCUMENTS_FILE, read_checked(root, DOCUMENTS_FILE, manifest))
    try:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
    except RuntimeError:
        raise ValueError(f"{root / INDEX_FILE} is not a faiss index: the index is corrupt") from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or index.d != built.dim:
        raise ValueError(f"{root / INDEX_FILE} is not an inner-product index of dim {built.dim} as {MANIFEST_FILE} says")
    if not index.ntotal == len(documents) == manifest["count"]:
        raise ValueError(f"{root}: {INDEX_FILE} holds {index.ntotal} vectors, {DOCUMENTS_FILE} {len(documents)} "
                         f"documents, {MANIFEST_FILE} says {manifest['count']}: the index is corrupt")
    return LocalIndex(index, documents, built, manifest["length"], int(manifest.get("truncated", 0)))
