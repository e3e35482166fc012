"""`fedlm data redact IN OUT`: OUT redacted in the same layout and formats, IN byte-identical, all or nothing."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from fedlm.cli.main import app


def snapshot(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_input(root) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "notes.txt").write_text("Mail ana.lopez@example.org now.\n\n\nCall +44 20 7946 0958.\n", encoding="utf-8")
    (root / "a" / "rows.csv").write_text('text,id\n"Card 4111 1111 1111 1111",7\n', encoding="utf-8")
    (root / "a" / "figure.png").write_bytes(b"\x89PNG")
    chat = {"messages": [{"role": "user", "content": "I am Maria Okafor"}, {"role": "assistant", "content": "Hi"}]}
    (root / "b.jsonl").write_text(json.dumps(chat) + "\n\n" + json.dumps({"text": "SSN 536-22-8726"}) + "\n",
                                  encoding="utf-8")


def test_redacts_into_a_new_folder_and_leaves_the_input_byte_identical(tmp_path):
    # Prepare
    make_input(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    # Execute
    result = CliRunner().invoke(app, ["data", "redact", str(tmp_path / "in"), str(tmp_path / "out"), "--json"])
    # Assert
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["written"] and report["total"] == 5
    assert {k: v for k, v in report["counts"].items() if v} == {"EMAIL": 1, "PHONE": 1, "CREDIT_CARD": 1, "PERSON": 1,
                                                               "US_SSN": 1}
    assert snapshot(tmp_path / "in") == before
    out = tmp_path / "out"
    assert (out / "a" / "notes.txt").read_text() == "Mail <EMAIL> now.\n\n\nCall <PHONE>.\n"
    assert (out / "a" / "rows.csv").read_text() == "text,id\nCard <CREDIT_CARD>,7\n"
    lines = (out / "b.jsonl").read_text().split("\n")
    assert json.loads(lines[0])["messages"][0] == {"role": "user", "content": "I am <PERSON>"}
    assert lines[1] == "" and json.loads(lines[2]) == {"text": "SSN <US_SSN>"}
    assert not (out / "a" / "figure.png").exists()  # a file a run does not read is not copied, and is listed
    assert {"path": "a/figure.png", "status": "skipped", "reason": "unknown extension .png", "replaced": 0} in report["files"]
    assert "ana.lopez" not in result.output and "4111" not in result.output


def test_a_binary_or_undecodable_file_is_refused_by_name_and_nothing_is_written(tmp_path):
    make_input(tmp_path / "in")
    (tmp_path / "in" / "a" / "blob.txt").write_bytes(b"\x00\x01\x02 binary")
    (tmp_path / "in" / "a" / "latin.txt").write_bytes("caf\xe9 ana@x.org".encode("latin-1"))
    before = snapshot(tmp_path / "in")
    result = CliRunner().invoke(app, ["data", "redact", str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "a/blob.txt" in result.output and "binary" in result.output
    assert "a/latin.txt" in result.output and "byte offset 3" in result.output
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no temp left
    assert snapshot(tmp_path / "in") == before


def test_refuses_an_out_inside_in_or_a_non_empty_out_without_overwrite(tmp_path):
    make_input(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    runner = CliRunner()
    inside = runner.invoke(app, ["data", "redact", str(tmp_path / "in"), str(tmp_path / "in" / "red")])
    assert inside.exit_code == 2 and "inside IN" in inside.output
    full = runner.invoke(app, ["data", "redact", str(tmp_path / "in"), str(tmp_path / "out")])
    assert full.exit_code == 2 and "--overwrite" in full.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "old"
    replaced = runner.invoke(app, ["data", "redact", str(tmp_path / "in"), str(tmp_path / "out"), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "b.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_only_the_chosen_entities_and_an_unknown_one_is_refused(tmp_path):
    make_input(tmp_path / "in")
    runner = CliRunner()
    bad = runner.invoke(app, ["data", "redact", str(tmp_path / "in"), str(tmp_path / "out"), "--entities", "EMAIL,SECRET"])
    assert bad.exit_code == 2 and "SECRET" in bad.output and not (tmp_path / "out").exists()
    result = runner.invoke(app, ["data", "redact", str(tmp_path / "in"), str(tmp_path / "out"), "--entities", "EMAIL",
                                 "--json"])
    assert json.loads(result.output)["counts"] == {"EMAIL": 1}
    assert "+44 20 7946 0958" in (tmp_path / "out" / "a" / "notes.txt").read_text()
