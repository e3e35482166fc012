"""`fedlm data check` as a user meets it: the report, JSON, exit codes, encodings, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlm.cli.data_cmd import app as data_app

runner = CliRunner()


@pytest.fixture
def sites(tmp_path: Path) -> Path:
    for site in ("north", "south"):
        (tmp_path / site / "notes").mkdir(parents=True)
        (tmp_path / site / "notes" / "visit.TXT").write_text("first visit\n\nsecond visit", encoding="utf-8")
        (tmp_path / site / "export.json").write_text("{}", encoding="utf-8")
    (tmp_path / "south" / "win.txt").write_bytes("caf\u00e9 au lait".encode("cp1252"))
    return tmp_path


def test_check_prints_a_table_of_clients_and_the_files_not_read(sites: Path):
    # Execute
    result = runner.invoke(data_app, ["check", str(sites)], env={"COLUMNS": "200"})
    # Assert: south/win.txt is cp1252, refused as UTF-8 with its byte offset: exit code 1
    assert result.exit_code == 1, result.output
    assert "north" in result.output and "unknown extension .json" in result.output
    assert "problem: south/win.txt: not UTF-8 text (invalid continuation byte at byte offset 3)" in result.output
    assert "lait" not in result.output and "visit" not in result.output


def test_check_with_the_right_encoding_passes(sites: Path):
    # Execute
    result = runner.invoke(data_app, ["check", str(sites), "--encoding", "cp1252", "--json"])
    # Assert
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["totals"] == {"clients": 2, "files_read": 3, "bytes_read": report["totals"]["bytes_read"],
                                "samples": 5, "skipped": 2, "refused": 0}
    assert report["encoding"] == "cp1252" and report["problems"] == []


def test_check_json_is_one_object_on_one_line(sites: Path):
    result = runner.invoke(data_app, ["check", str(sites), "--json"])
    assert result.exit_code == 1
    assert result.stdout.strip().count("\n") == 0
    assert json.loads(result.stdout)["totals"]["refused"] == 1


def test_check_instruction_kind_reads_only_jsonl(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "chat.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    (tmp_path / "a" / "notes.txt").write_text("prose", encoding="utf-8")
    result = runner.invoke(data_app, ["check", str(tmp_path), "--kind", "instruction", "--json"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["clients"][0]["files"]
    assert [(f["path"], f["status"], f["samples"]) for f in files] == [("a/chat.jsonl", "read", 1),
                                                                          ("a/notes.txt", "skipped", 0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--encoding", "nope"], "--encoding: 'nope' is not a text encoding"),
        (["--kind", "vision"], "--kind must be one of causal_lm, instruction"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(sites: Path, args: list[str], message: str):
    result = runner.invoke(data_app, ["check", str(sites), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_missing_folder_exits_2(tmp_path: Path):
    result = runner.invoke(data_app, ["check", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_main_app_has_the_data_group():
    from fedlm.cli.main import app  # the full CLI imports torch: only here

    result = runner.invoke(app, ["data", "check", "--help"])
    assert result.exit_code == 0 and "--encoding" in result.output
