"""Tests of the data report: totals, problems, the JSON dict, the tables; never a sample's text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from fedlm.data.folders import scan_folder
from fedlm.data.report import (
    ClientReport,
    DataRefused,
    DataReport,
    FileReport,
    raise_for_problems,
    report_dict,
    report_summary,
    report_tables,
)

SECRET = "patient Jane Roe, born 1970"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "north").mkdir()
    (tmp_path / "north" / "a.txt").write_text(f"{SECRET}\n\nsecond", encoding="utf-8")  # 2 samples
    (tmp_path / "north" / "b[1].md").write_text("third", encoding="utf-8")  # 1 sample; brackets are rich markup
    (tmp_path / "north" / "skip.json").write_text("{}", encoding="utf-8")
    (tmp_path / "south").mkdir()
    (tmp_path / "south" / "bad.txt").write_bytes(SECRET.encode() + b"\x00")
    return tmp_path


def _render(report: DataReport) -> str:
    console = Console(record=True, width=200)
    console.print(*report_tables(report))
    return console.export_text()


def test_totals_and_problems_are_counted_per_client(folder: Path):
    # Execute
    report = scan_folder(folder)
    north, south = report.clients
    # Assert
    assert (north.samples, len(north.files), north.bytes_read) == (3, 3, len(SECRET) + len("\n\nsecond") + len("third"))
    assert (south.samples, [f.status for f in south.files]) == (0, ["refused"])
    assert report.samples == 3
    assert report.problems() == [f"south/bad.txt: binary: a NUL character at byte offset {len(SECRET)}"]


def test_the_dict_is_json_and_holds_every_file(folder: Path):
    # Execute
    data = json.loads(json.dumps(report_dict(scan_folder(folder))))
    # Assert
    assert data["totals"] == {"clients": 2, "files_read": 2, "bytes_read": data["clients"][0]["bytes_read"],
                              "samples": 3, "skipped": 1, "refused": 1}
    assert [f["path"] for c in data["clients"] for f in c["files"]] == [
        "north/a.txt", "north/b[1].md", "north/skip.json", "south/bad.txt"]
    assert data["clients"][1]["files"][0]["offset"] == len(SECRET)
    assert data["encoding"] == "utf-8" and data["formats"] == [".txt", ".md", ".jsonl", ".csv", ".parquet"]


def test_the_tables_show_clients_and_the_files_not_read_with_names_intact(folder: Path):
    # Execute
    text = _render(scan_folder(folder))
    # Assert
    assert "north" in text and "south" in text
    assert "north/skip.json" in text and "unknown extension .json" in text
    assert "south/bad.txt" in text and "refused" in text
    assert "files not read" in text


def test_no_rendering_quotes_the_text_of_a_file(folder: Path):
    # Execute
    report = scan_folder(folder)
    outputs = [_render(report), json.dumps(report_dict(report)), report_summary(report), repr(report)]
    with pytest.raises(DataRefused) as refused:
        raise_for_problems(report)
    # Assert
    for output in [*outputs, str(refused.value)]:
        assert "Jane" not in output and "second" not in output


def test_a_long_list_of_files_is_cut_with_a_count():
    files = tuple(FileReport(f"c/{i}.bin", "skipped", "unknown extension .bin") for i in range(5))
    report = DataReport("d", "utf-8", (".txt",), (ClientReport("c", "c", files),))
    console = Console(record=True, width=120)
    console.print(*report_tables(report, max_files=2))
    text = console.export_text()
    assert "c/1.bin" in text and "c/2.bin" not in text and "3 more" in text


def test_a_clean_report_raises_nothing_and_summarises_in_one_line(folder: Path):
    # Prepare
    report = scan_folder(folder)
    clean = DataReport(report.path, report.encoding, report.formats, report.clients[:1])
    # Execute / Assert
    raise_for_problems(clean)
    assert report_summary(clean).endswith(": 1 clients, 2 files read (0.0 MB, 3 samples), 1 skipped, 0 refused "
                                          "(encoding utf-8)")
