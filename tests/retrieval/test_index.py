"""The local index (fedlm.retrieval.index): exact cosine neighbours, a checked save/load, refusals that change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from fedlm.retrieval import index as index_module
from fedlm.retrieval.encoder import embed_texts, load_encoder
from fedlm.retrieval.index import (
    DOCUMENTS_FILE,
    INDEX_FILE,
    adapter_fingerprint,
    MANIFEST_FILE,
    EncoderStamp,
    build_index,
    encoder_stamp,
    index_vectors,
    load_index,
    load_query_encoder,
    save_index,
    search,
)

PLANTED = EncoderStamp("planted", "0" * 64, dim=2)
PASSAGES = ["The king is dead; long live the king.", "A horse, a horse, my kingdom for a horse!",
            "Out, damned spot! Out, I say!", "Now is the winter of our discontent.",
            "To be, or not to be, that is the question."]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny():
    return load_encoder("tiny-encoder")


@pytest.fixture(scope="module")
def built(tiny):
    return build_index(PASSAGES, tiny, batch_size=2)


@pytest.fixture
def saved(built, tmp_path: Path) -> Path:
    return save_index(built, tmp_path / "index")


def test_hand_worked_planted_set_ranks_by_cosine():
    # Prepare: query (0.8, 0.6) against (1, 0), (0, 1), (0.6, 0.8), (-1, 0): cosines 0.8, 0.6, 0.96, -0.8
    vectors = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], np.float32)
    index = index_vectors(vectors, ["east", "north", "north-east", "west"], PLANTED, length=8)
    # Execute
    scores, ids = search(index, np.array([[0.8, 0.6]], np.float32), k=3)
    # Assert: the three nearest, best first
    assert ids.tolist() == [[2, 0, 1]]
    np.testing.assert_allclose(scores, [[0.96, 0.8, 0.6]], atol=1e-6)


def test_search_equals_numpy_brute_force_on_a_planted_set():
    # Prepare: 300 random unit vectors in 16 dims, 25 queries
    rng = np.random.default_rng(7)
    documents, queries = unit_rows(rng, 300, 16), unit_rows(rng, 25, 16)
    index = index_vectors(documents, [f"d{i}" for i in range(300)], EncoderStamp("planted", "0" * 64, 16), length=8)
    # Execute
    scores, ids = search(index, queries, k=10)
    # Assert: the exact top 10 of the full cosine matrix, in order
    cosines = queries @ documents.T
    expected = np.argsort(-cosines, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(cosines, expected, axis=1), atol=1e-5)


def test_k_past_the_collection_returns_every_document_once():
    index = index_vectors(np.eye(2, dtype=np.float32), ["a", "b"], PLANTED, length=8)
    scores, ids = search(index, np.array([[0.0, 1.0]], np.float32), k=10)
    assert ids.tolist() == [[1, 0]] and scores.shape == (1, 2)


def test_bad_vectors_and_queries_are_refused():
    with pytest.raises(ValueError, match="unit vectors"):
        index_vectors(np.array([[2.0, 0.0]], np.float32), ["a"], PLANTED, length=8)
    with pytest.raises(ValueError, match="one per document"):
        index_vectors(np.eye(2, dtype=np.float32), ["a"], PLANTED, length=8)
    index = index_vectors(np.eye(2, dtype=np.float32), ["a", "b"], PLANTED, length=8)
    with pytest.raises(ValueError, match=r"\[queries, 2\]"):
        search(index, np.ones((1, 3), np.float32), k=1)
    with pytest.raises(ValueError, match="k must be"):
        search(index, np.ones((1, 2), np.float32), k=0)


def test_build_embeds_each_document_and_finds_it_first(tiny, built):
    # Execute
    index = built
    # Assert: the index holds the encoder's own vectors; each passage's nearest neighbour is itself
    vectors = embed_texts(tiny.model, tiny.tokenizer, PASSAGES, length=index.length)
    scores, ids = search(index, vectors, k=1)
    assert ids[:, 0].tolist() == list(range(len(PASSAGES)))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert index.dim == 32 and index.length == 128 and index.truncated == 0
    assert "king" not in repr(index)


def test_any_text_survives_the_round_trip(tiny, tmp_path: Path):
    # Non-ASCII, a newline, quotes, and a lone surrogate (a file decoded with surrogateescape would hold one)
    texts = ["H\u00e9las, pauvre Yorick! \u2620", "line one\nline \"two\"", "bad byte \udcff here"]
    vectors = np.eye(3, dtype=np.float32)
    save_index(index_vectors(vectors, texts, EncoderStamp("planted", "0" * 64, 3), length=8), tmp_path / "i")
    assert load_index(tmp_path / "i").documents == tuple(texts)


def test_save_load_round_trip(tiny, saved: Path):
    # Execute
    loaded = load_index(saved, encoder=encoder_stamp(tiny))
    # Assert: same documents, same answers; index.faiss is a plain faiss file
    assert loaded.documents == tuple(PASSAGES) and loaded.count == 5
    query = embed_texts(tiny.model, tiny.tokenizer, ["my kingdom for a horse"], length=128)
    fresh = build_index(PASSAGES, tiny, batch_size=2)
    np.testing.assert_array_equal(loaded.index.reconstruct_n(0, 5), fresh.index.reconstruct_n(0, 5))
    for got, want in zip(search(loaded, query, 5), search(fresh, query, 5), strict=True):
        np.testing.assert_array_equal(got, want)
    assert faiss.read_index(str(saved / INDEX_FILE)).ntotal == 5
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    assert (manifest["format"], manifest["version"], manifest["dim"], manifest["count"]) == ("fedlm-index", 1, 32, 5)
    assert manifest["encoder"]["name"] == "tiny-encoder" and manifest["encoder"]["adapter"] is None


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [INDEX_FILE, DOCUMENTS_FILE])
def test_a_corrupt_or_edited_file_is_refused_by_name_and_left_as_it_is(saved: Path, name: str):
    # Prepare
    if name == DOCUMENTS_FILE:
        path = saved / name
        path.write_text(path.read_text().replace("king", "queen"))
    else:
        flip_last_byte(saved / name)
    before = snapshot(saved)
    # Execute / Assert
    with pytest.raises(ValueError, match=f"{name} does not match the sha256"):
        load_index(saved)
    assert snapshot(saved) == before


def test_a_foreign_directory_is_refused(tmp_path: Path, saved: Path):
    # A folder without a manifest, another tool's manifest, a newer format version
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / INDEX_FILE).write_bytes(b"not ours")
    with pytest.raises(ValueError, match="is not a fedlm index: it has no manifest.json"):
        load_index(tmp_path / "other")
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    for edit, message in (({"format": "chroma"}, "is not a fedlm index manifest"),
                          ({"version": 2}, "format version 2; this fedlm reads version 1")):
        (saved / MANIFEST_FILE).write_text(json.dumps(manifest | edit))
        with pytest.raises(ValueError, match=message):
            load_index(saved)
    with pytest.raises(ValueError, match="does not exist"):
        load_index(tmp_path / "missing")


def test_an_encoder_of_another_dim_or_adapter_is_refused(tiny, saved: Path):
    built = encoder_stamp(tiny)
    with pytest.raises(ValueError, match="holds vectors of dim 32, but the encoder 'other' gives dim 384"):
        load_index(saved, encoder=EncoderStamp("other", built.fingerprint, 384))
    with pytest.raises(ValueError, match="fingerprints differ"):
        load_index(saved, encoder=EncoderStamp("tiny-encoder", "f" * 64, 32))
    with pytest.raises(ValueError, match="built with no adapter, but the query would use adapter abc"):
        load_index(saved, encoder=EncoderStamp("tiny-encoder", built.fingerprint, 32, adapter="abc" * 20))


def test_an_empty_collection_is_refused_and_writes_nothing(tiny, tmp_path: Path):
    with pytest.raises(ValueError, match="the collection is empty"):
        build_index([], tiny)
    with pytest.raises(ValueError, match="document 1 is blank"):
        build_index(["a passage", "  \n"], tiny)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rebuild_leaves_the_old_index_byte_identical(tiny, saved: Path, monkeypatch):
    # Prepare: a new index whose manifest fails to write, after index.faiss and documents.jsonl were written
    before = snapshot(saved)
    replacement = build_index(PASSAGES[:2], tiny)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "make_manifest", fail)
    # Execute
    with pytest.raises(OSError, match="disk full"):
        save_index(replacement, saved, overwrite=True)
    # Assert: the old files, byte for byte, and no half-written sibling left
    assert snapshot(saved) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["index"]


def test_replacing_needs_overwrite_and_never_touches_a_foreign_folder(tiny, saved: Path, tmp_path: Path):
    before = snapshot(saved)
    replacement = build_index(PASSAGES[:2], tiny)
    with pytest.raises(ValueError, match="pass --overwrite"):
        save_index(replacement, saved)
    assert snapshot(saved) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a fedlm index .* refusing to replace it"):
        save_index(replacement, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    # Execute: with overwrite, the new index takes the old one's place
    save_index(replacement, saved, overwrite=True)
    assert load_index(saved).documents == tuple(PASSAGES[:2])


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny encoder with non-zero B (so it changes the vectors), saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    directory = tmp_path_factory.mktemp("adapter")
    config = LoraConfig(task_type="FEATURE_EXTRACTION", r=2, target_modules=["query", "value"], init_lora_weights=False)
    get_peft_model(load_encoder("tiny-encoder").model, config).save_pretrained(directory)
    return directory


def test_an_adapter_changes_the_vectors_and_an_index_remembers_it(tiny, adapter_dir: Path, tmp_path: Path):
    # Execute
    encoder, stamp = load_query_encoder("tiny-encoder", adapter_dir=adapter_dir)
    index = build_index(PASSAGES, encoder, stamp=stamp)
    save_index(index, tmp_path / "adapted")
    # Assert: same encoder files, the adapter's fingerprint, other vectors than the base encoder's
    assert stamp.fingerprint == encoder_stamp(tiny).fingerprint and stamp.adapter == adapter_fingerprint(adapter_dir)
    base_vectors = embed_texts(tiny.model, tiny.tokenizer, PASSAGES, length=128)
    assert not np.allclose(index.index.reconstruct_n(0, 5), base_vectors, atol=1e-3)
    assert load_index(tmp_path / "adapted", encoder=stamp).count == 5
    with pytest.raises(ValueError, match="built with adapter .*, but the query would use no adapter"):
        load_index(tmp_path / "adapted", encoder=encoder_stamp(tiny))


def test_the_adapter_fingerprint_ignores_where_the_adapter_came_from(adapter_dir: Path, tmp_path: Path):
    # Prepare: a copy whose config names another base model path
    copy = tmp_path / "copy"
    copy.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "/elsewhere"}))
    (copy / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
    # Assert: same fingerprint; another rank is another adapter; a folder without weights is refused
    assert adapter_fingerprint(copy) == adapter_fingerprint(adapter_dir)
    (copy / "adapter_config.json").write_text(json.dumps(config | {"r": 4}))
    assert adapter_fingerprint(copy) != adapter_fingerprint(adapter_dir)
    (copy / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no adapter_model.safetensors"):
        adapter_fingerprint(copy)
