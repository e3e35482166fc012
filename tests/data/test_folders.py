"""Tests of load_folder: clients from sub-folders of text files (any depth, any format) and from .jsonl files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlm.data.folders import (
    NOT_A_CLIENT,
    list_files,
    load_folder,
    load_folder_with_report,
    read_client_samples,
    scan_folder,
)
from fedlm.data.report import DataRefused
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
    (root / "alice" / "ignored.json").write_text('{"text": "not a sample"}', encoding="utf-8")
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


def test_client_folder_without_a_file_fedlm_reads_raises_saying_what_was_skipped(tmp_path: Path):
    # Prepare
    (tmp_path / "carol").mkdir()
    (tmp_path / "carol" / "notes.json").write_text('{"text": "x"}', encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match=r"'carol'.*no non-empty samples.*1 skipped: unknown extension \.json"):
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


# --- formats, nesting, the report ------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """One client of every kind of file the issue found skipped without a word, plus some to skip."""
    site = tmp_path / "data" / "site"
    (site / "deeper" / "deepest").mkdir(parents=True)
    (site / "NOTES.TXT").write_text("upper case", encoding="utf-8")
    (site / "guide.md").write_text("# Title\n\nmarkdown body", encoding="utf-8")
    (site / "rows.csv").write_text("id,text\n1,from csv\n", encoding="utf-8")
    (site / "lines.JSONL").write_text('{"text": "from jsonl"}\n', encoding="utf-8")
    (site / "deeper" / "one.txt").write_text("one level down", encoding="utf-8")
    (site / "deeper" / "deepest" / "two.txt").write_text("two levels down", encoding="utf-8")
    (site / "table.json").write_text('[{"text": "json arrays are not read"}]', encoding="utf-8")
    (site / "empty.txt").write_bytes(b"")
    (site / ".draft.txt").write_text("hidden", encoding="utf-8")
    (site / ".git").mkdir()
    (site / ".git" / "HEAD.txt").write_text("inside a hidden folder", encoding="utf-8")
    (tmp_path / "data" / "README.md").write_text("top-level notes", encoding="utf-8")
    return tmp_path / "data"


def test_every_format_at_any_depth_and_in_any_case_is_read_in_path_order(mixed: Path):
    # Execute
    site = load_folder(mixed, test_fraction=0.0).get("site")
    # Assert: path order compares part by part: "NOTES.TXT" < "deeper/deepest/two.txt" < "deeper/one.txt" < "guide.md"
    assert site.train == ("upper case", "two levels down", "one level down", "# Title", "markdown body",
                          "from jsonl", "from csv")


def test_the_report_lists_every_file_with_what_was_done_and_why(mixed: Path):
    # Execute
    report = scan_folder(mixed)
    # Assert
    (site,) = report.clients
    status = {f.path: (f.status, f.reason, f.samples) for f in site.files}
    assert status == {
        "site/.draft.txt": ("skipped", "hidden file", 0),
        "site/.git": ("skipped", "hidden folder", 0),
        "site/NOTES.TXT": ("read", "", 1),
        "site/deeper/deepest/two.txt": ("read", "", 1),
        "site/deeper/one.txt": ("read", "", 1),
        "site/empty.txt": ("skipped", "empty file", 0),
        "site/guide.md": ("read", "", 2),
        "site/lines.JSONL": ("read", "", 1),
        "site/rows.csv": ("read", "", 1),
        "site/table.json": ("skipped", "unknown extension .json", 0),
    }
    assert site.bytes_read == sum(len(p.read_bytes()) for p in (mixed / "site").rglob("*")
                                  if p.is_file() and p.suffix.lower() in (".txt", ".md", ".jsonl", ".csv")
                                  and "." not in (p.name[0], p.parent.name[0]))
    assert [(f.path, f.reason) for f in report.ignored] == [("README.md", NOT_A_CLIENT)]
    assert report.problems() == []


def test_every_refused_file_is_named_in_one_error_and_nothing_is_loaded(tmp_path: Path):
    # Prepare: three bad files in two clients, one client with nothing to read, one good client
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "junk.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "a" / "win.txt").write_bytes("ok caf\u00e9 then".encode("cp1252"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.jsonl").write_text('{"text": "fine"}\n{oops\n', encoding="utf-8")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "only.json").write_text("{}", encoding="utf-8")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "fine.txt").write_text("fine", encoding="utf-8")
    # Execute
    with pytest.raises(DataRefused) as refused:
        load_folder(tmp_path)
    # Assert
    assert refused.value.problems == [
        "a/junk.txt: binary: a NUL character at byte offset 0",
        "a/win.txt: not UTF-8 text (invalid continuation byte at byte offset 6); set data.encoding to the file's "
        "encoding (e.g. 'cp1252')",
        "b/bad.jsonl, line 2: not valid JSON (Expecting property name enclosed in double quotes)",
        "client 'c' (c) has no non-empty samples (0 file(s) read, none with text; 1 skipped: unknown extension .json)",
    ]
    assert "4 problem(s), nothing was trained" in str(refused.value) and "caf" not in str(refused.value)


def test_the_encoding_setting_reads_a_cp1252_client(tmp_path: Path):
    # Prepare
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "win.txt").write_bytes("\u201cquoted\u201d caf\u00e9".encode("cp1252"))
    # Execute
    client = load_folder(tmp_path, test_fraction=0.0, encoding="cp1252").get("a")
    # Assert
    assert client.train == ("\u201cquoted\u201d caf\u00e9",)


def test_a_top_level_jsonl_client_in_upper_case_is_a_client(tmp_path: Path):
    _write_jsonl(tmp_path / "x.jsonl", ["lower"])
    (tmp_path / "Y.JSONL").write_text('{"text": "upper"}\n', encoding="utf-8")
    assert load_folder(tmp_path).client_ids() == ("Y", "x")


def test_a_folder_of_top_level_text_files_says_they_are_not_clients(tmp_path: Path):
    (tmp_path / "site1.txt").write_text("a", encoding="utf-8")
    with pytest.raises(ValueError, match=r"holds no clients \(1 top-level file\(s\) found, which are not clients\)"):
        load_folder(tmp_path)


def test_load_folder_with_report_returns_the_same_data_and_the_report(mixed: Path):
    dataset, report = load_folder_with_report(mixed, seed=3)
    assert dataset == load_folder(mixed, seed=3)
    assert report.samples == len(dataset.get("site").train) + len(dataset.get("site").test) == 7


def test_read_client_samples_reads_one_client_folder_or_file(mixed: Path):
    assert read_client_samples(mixed / "site") == list(load_folder(mixed, test_fraction=0.0).get("site").train)
    assert read_client_samples(mixed / "site" / "guide.md") == ["# Title", "markdown body"]
    with pytest.raises(DataRefused, match="no non-empty samples.*unknown extension .json"):
        read_client_samples(mixed / "site" / "table.json")


def test_list_files_finds_nested_files_in_any_case_and_skips_hidden_ones(tmp_path: Path):
    (tmp_path / "sub" / ".hidden").mkdir(parents=True)
    for name in ("a.jsonl", "B.JSONL", "sub/c.jsonl", "sub/.d.jsonl", "sub/.hidden/e.jsonl", "f.txt"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    assert [p.relative_to(tmp_path).as_posix() for p in list_files(tmp_path, ".jsonl")] == ["B.JSONL", "a.jsonl",
                                                                                           "sub/c.jsonl"]
