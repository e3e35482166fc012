"""Tests of load_folder: clients from sub-folders of .txt files and from .jsonl files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlm.data.folders import load_folder
from fedlm.data.types import client_rng, split_train_test

# alice's samples in file order: a.txt's two paragraphs, then b.txt's two.
ALICE = ["first para\nstill first", "second", "third", "fourth"]


def _write_jsonl(path: Path, texts: list[str]) -> None:
    lines = [json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)]
    path.write_text("".join(lines), encoding="utf-8")


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    root = tmp_path / "my-clinics"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "b.txt").write_text("third\n\n\n  fourth  \n", encoding="utf-8")
    (root / "alice" / "a.txt").write_text("first para\nstill first\n\n \t \nsecond\n", "utf-8")
    (root / "alice" / "ignored.md").write_text("not a sample", encoding="utf-8")
    _write_jsonl(root / "bob.jsonl", [f"bob sample {i}" for i in range(10)])
    (root / "README").write_text("ignored", encoding="utf-8")
    (root / ".hidden").mkdir()
    return root


def test_load_folder_reads_txt_and_jsonl_clients(federation: Path):
    # Execute
    dataset = load_folder(federation)
    # Assert
    assert dataset.name == "my-clinics"
    assert dataset.client_ids() == ("alice", "bob")
    alice, bob = dataset.get("alice"), dataset.get("bob")
    assert sorted(alice.train + alice.test) == sorted(ALICE)
    # 4 samples * 0.2 = 0.8 -> 1 test sample; 10 * 0.2 -> 2.
    assert (len(alice.train), len(alice.test)) == (3, 1)
    assert (len(bob.train), len(bob.test)) == (8, 2)


def test_load_folder_split_uses_the_client_rng_and_keeps_file_order(federation: Path):
    # Prepare
    expected = split_train_test(
        ALICE, test_fraction=0.2, rng=client_rng(7, "alice")
    )
    # Execute
    alice = load_folder(federation, seed=7).get("alice")
    # Assert
    assert (alice.train, alice.test) == expected


def test_load_folder_is_deterministic_and_seed_dependent(federation: Path):
    # Execute
    first, again = load_folder(federation, seed=3), load_folder(federation, seed=3)
    others = [load_folder(federation, seed=s).get("bob").test for s in range(4, 9)]
    # Assert
    assert first == again
    assert any(test != first.get("bob").test for test in others)


def test_a_clients_split_does_not_depend_on_other_clients(federation: Path, tmp_path: Path):
    # Prepare
    alone = tmp_path / "alone"
    alone.mkdir()
    _write_jsonl(alone / "bob.jsonl", [f"bob sample {i}" for i in range(10)])
    # Execute / Assert
    assert load_folder(alone).get("bob") == load_folder(federation).get("bob")


def test_blank_jsonl_lines_and_empty_texts_are_skipped(tmp_path: Path):
    # Prepare
    content = '{"text": "one"}\n\n{"text": "  "}\n{"text": "two"}\n'
    (tmp_path / "c.jsonl").write_text(content, encoding="utf-8")
    # Execute
    client = load_folder(tmp_path, test_fraction=0.0).get("c")
    # Assert
    assert (client.train, client.test) == (("one", "two"), ())


def test_missing_path_raises(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        load_folder(tmp_path / "nowhere")


def test_path_that_is_a_file_raises(tmp_path: Path):
    # Prepare
    file = tmp_path / "x.jsonl"
    file.write_text('{"text": "a"}\n', encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match="not a folder"):
        load_folder(file)


def test_empty_folder_raises(tmp_path: Path):
    with pytest.raises(ValueError, match="holds no clients"):
        load_folder(tmp_path)


def test_client_folder_without_txt_files_raises(tmp_path: Path):
    # Prepare
    (tmp_path / "carol").mkdir()
    (tmp_path / "carol" / "notes.md").write_text("x", encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match="carol.*no .txt files"):
        load_folder(tmp_path)


def test_client_without_samples_raises(tmp_path: Path):
    # Prepare
    (tmp_path / "dave").mkdir()
    (tmp_path / "dave" / "empty.txt").write_text("\n \n\n", encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match="'dave'.*no non-empty samples"):
        load_folder(tmp_path)


def test_duplicate_client_id_raises(tmp_path: Path):
    # Prepare
    (tmp_path / "erin").mkdir()
    (tmp_path / "erin" / "a.txt").write_text("hello", encoding="utf-8")
    _write_jsonl(tmp_path / "erin.jsonl", ["hello"])
    # Execute / Assert
    with pytest.raises(ValueError, match="duplicate client id 'erin'"):
        load_folder(tmp_path)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected a JSON object, got list"),
        ('{"body": "no text field"}', 'line 2: expected a string "text" field, found no field'),
        ('{"text": 42}', 'line 2: expected a string "text" field, found a int'),
    ],
)
def test_bad_jsonl_line_raises_with_file_and_line(tmp_path: Path, bad_line: str, message: str):
    # Prepare
    (tmp_path / "frank.jsonl").write_text('{"text": "fine"}\n' + bad_line + "\n", encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match=r"frank\.jsonl, " + message.replace("[", r"\[")):
        load_folder(tmp_path)


def test_bad_test_fraction_raises(federation: Path):
    with pytest.raises(ValueError, match="test_fraction"):
        load_folder(federation, test_fraction=1.5)
