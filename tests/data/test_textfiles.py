"""Tests of the per-format readers: streamed paragraphs, encodings, binary files, JSONL, CSV, Parquet."""

from __future__ import annotations

import codecs
import itertools
import re
from pathlib import Path

import pytest

from fedlm.config import ConfigError, DataSettings
from fedlm.data.textfiles import (
    FileRefusal,
    binary_reason,
    check_encoding,
    find_decode_error,
    iter_csv_texts,
    iter_file_samples,
    iter_jsonl_texts,
    iter_paragraphs,
    iter_parquet_texts,
    split_paragraphs,
)

_BREAK = re.compile(r"\n[ \t\f\v]*\n")


def _paragraphs_whole(text: str) -> list[str]:
    """The reference: the whole-text split that fedlm used before reading streamed."""
    return [p.strip() for p in _BREAK.split(text) if p.strip()]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- paragraphs, streamed ------------------------------------------------------------------


TRICKY = "one\n\ntwo  \n \t \n\nthree\nstill three\n\n\n  four\n \n"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, len(TRICKY)])
def test_streamed_paragraphs_equal_the_whole_text_split_for_every_chunk_size(size: int):
    # Prepare: cut at every offset of a text whose breaks span chunk edges
    chunks = [TRICKY[i : i + size] for i in range(0, len(TRICKY), size)]
    # Execute
    streamed = list(split_paragraphs(chunks))
    # Assert
    assert streamed == _paragraphs_whole(TRICKY) == ["one", "two", "three\nstill three", "four"]


def test_streamed_paragraphs_equal_the_whole_split_for_every_cut_in_two():
    text = "a\n \nb\n\n\nc \n\t\nd"
    for cut in range(len(text) + 1):
        assert list(split_paragraphs([text[:cut], text[cut:]])) == _paragraphs_whole(text), cut


def test_a_file_reads_with_windows_newlines_as_with_unix_ones(tmp_path: Path):
    # Prepare
    unix = _write(tmp_path / "u.txt", b"first\nline\n\nsecond\n")
    windows = _write(tmp_path / "w.txt", b"first\r\nline\r\n\r\nsecond\r\n")
    # Execute / Assert
    assert list(iter_paragraphs(windows, "utf-8")) == list(iter_paragraphs(unix, "utf-8")) == ["first\nline", "second"]


# --- encodings --------------------------------------------------------------------------------


def test_utf8_drops_a_byte_order_mark(tmp_path: Path):
    path = _write(tmp_path / "bom.txt", codecs.BOM_UTF8 + "caf\u00e9\n\nthé".encode())
    assert list(iter_paragraphs(path, "utf-8")) == ["caf\u00e9", "thé"]


def test_cp1252_text_reads_with_its_encoding_and_is_refused_as_utf8_with_the_byte_offset(tmp_path: Path):
    # Prepare: "na" then 0xEF (i-diaeresis in cp1252), invalid as a UTF-8 start byte at offset 2
    path = _write(tmp_path / "w.txt", "na\u00efve \u2019quote\u2019".encode("cp1252"))
    # Execute / Assert
    assert list(iter_paragraphs(path, "cp1252")) == ["na\u00efve \u2019quote\u2019"]
    with pytest.raises(FileRefusal) as refused:
        list(iter_paragraphs(path, "utf-8"))
    assert refused.value.offset == 2
    assert "not UTF-8 text (invalid continuation byte at byte offset 2)" in refused.value.reason
    assert "data.encoding" in refused.value.reason and "quote" not in str(refused.value)


def test_utf16_with_a_byte_order_mark_reads_with_utf16_and_is_binary_as_utf8(tmp_path: Path):
    # Prepare: little-endian with a BOM: ASCII letters are followed by NUL bytes
    path = _write(tmp_path / "u16.txt", "hello\n\nworld".encode("utf-16"))
    # Execute / Assert
    assert list(iter_file_samples(path, "utf-16")) == ["hello", "world"]
    with pytest.raises(FileRefusal, match="binary: a NUL character at byte offset 3.*data.encoding = 'utf-16'"):
        list(iter_file_samples(path, "utf-8"))


def test_the_decode_error_offset_counts_bytes_held_back_between_blocks(tmp_path: Path, monkeypatch):
    # Prepare: blocks of 4 bytes; a 3-byte euro sign spans the first edge, the bad byte sits at offset 9
    monkeypatch.setattr("fedlm.data.textfiles.CHUNK_CHARS", 4)
    data = b"abc" + "\u20ac".encode() + b"def" + b"\xff" + b"gh"
    path = _write(tmp_path / "x.txt", data)
    # Execute / Assert
    assert find_decode_error(path, "utf-8") == (9, "invalid start byte")
    assert find_decode_error(path, "utf-8") == (data.index(b"\xff"), "invalid start byte")


def test_a_truncated_last_character_is_refused_at_its_first_byte(tmp_path: Path):
    path = _write(tmp_path / "cut.txt", b"ok " + "\u20ac".encode()[:2])
    assert find_decode_error(path, "utf-8")[0] == 3


@pytest.mark.parametrize("name", ["utf-8", "UTF8", "cp1252", "Windows-1252", "latin-1", "utf-16", "utf-16-le"])
def test_known_text_encodings_pass_the_setting(name: str):
    assert check_encoding(name) == name
    assert DataSettings(encoding=name).encoding == name


@pytest.mark.parametrize("name", ["nope", "base64", "rot13", ""])
def test_unknown_or_binary_codecs_are_refused_naming_the_setting(name: str):
    with pytest.raises(ValueError, match="data.encoding"):
        check_encoding(name)
    with pytest.raises(ConfigError, match="data.encoding"):
        DataSettings(encoding=name)


# --- binary files -------------------------------------------------------------------------------


def test_a_nul_byte_in_the_first_block_marks_a_file_binary_at_its_offset():
    assert binary_reason(b"text\x00more", "utf-8") == ("binary: a NUL character at byte offset 4", 4)


def test_a_tenth_of_control_characters_marks_a_file_binary_and_less_does_not():
    # 100 characters: 11 control characters are binary, 10 are not (the share must exceed 0.1)
    assert binary_reason(b"\x01" * 11 + b"a" * 89, "utf-8") is not None
    assert binary_reason(b"\x01" * 10 + b"a" * 90, "utf-8") is None


def test_tabs_newlines_and_form_feeds_are_not_control_characters_here():
    assert binary_reason(b"\t\n\r\f\v" * 100, "utf-8") is None


def test_a_binary_file_is_refused_before_any_sample_is_read(tmp_path: Path):
    path = _write(tmp_path / "junk.txt", bytes(range(256)) * 8)
    with pytest.raises(FileRefusal, match=r"junk\.txt: binary: a NUL character at byte offset 0"):
        next(iter_file_samples(path, "utf-8"))


# --- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_texts_skip_blank_lines_and_blank_texts(tmp_path: Path):
    path = _write(tmp_path / "a.jsonl", b'{"text": "one"}\n\n{"text": "  "}\r\n{"text": "two\\u2028still two"}\n')
    assert list(iter_jsonl_texts(path, "utf-8")) == ["one", "two\u2028still two"]


def test_instruction_records_in_a_text_client_are_refused_with_a_hint(tmp_path: Path):
    path = _write(tmp_path / "chat.jsonl", b'{"messages": []}\n')
    with pytest.raises(FileRefusal, match=r'chat\.jsonl, line 1: expected a string "text" field.*task\.kind'):
        list(iter_jsonl_texts(path, "utf-8"))


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_reads_the_text_column_with_quoted_newlines_and_drops_blank_cells(tmp_path: Path):
    path = _write(tmp_path / "t.csv", b'id,text\r\n1,"first, with comma"\r\n2,"two\r\nlines"\r\n3,\r\n\r\n4,last\r\n')
    assert list(iter_csv_texts(path, "utf-8")) == ["first, with comma", "two\r\nlines", "last"]


def test_csv_cells_longer_than_the_csv_default_limit_are_read(tmp_path: Path):
    long = "x" * 200_000  # the csv module refuses fields past 131,072 characters by default
    path = _write(tmp_path / "long.csv", f"text\n{long}\n".encode())
    assert list(iter_csv_texts(path, "utf-8")) == [long]


def test_csv_without_a_text_column_is_refused_naming_its_columns(tmp_path: Path):
    path = _write(tmp_path / "t.csv", b"id,body\n1,hello\n")
    with pytest.raises(FileRefusal, match=r't\.csv, line 1: no "text" column in the header row \(columns: "id", "body"\)'):
        list(iter_csv_texts(path, "utf-8"))


def test_a_short_csv_row_is_refused_with_its_line(tmp_path: Path):
    path = _write(tmp_path / "t.csv", b"id,text\n1,fine\n2\n")
    with pytest.raises(FileRefusal, match=r"line 3: a row of 1 cells has no \"text\" cell"):
        list(iter_csv_texts(path, "utf-8"))


# --- Parquet ---------------------------------------------------------------------------------------


def test_parquet_without_pyarrow_is_refused_saying_what_to_install(tmp_path: Path, monkeypatch):
    # Prepare: make `import pyarrow` fail whether or not it is installed
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    path = _write(tmp_path / "t.parquet", b"PAR1")
    # Execute / Assert
    with pytest.raises(FileRefusal, match="needs pyarrow"):
        list(iter_parquet_texts(path, "utf-8"))


def test_parquet_text_column_is_read_in_order_skipping_nulls(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": ["a", None, "  ", "d"]}), path)
    assert list(iter_file_samples(path, "utf-8")) == ["a", "d"]


def test_every_prefix_cut_of_a_paragraph_stream_matches(tmp_path: Path):
    """Three-way cuts of a short text: the streamed split never depends on where chunks end."""
    text = "x\n\n \ny\n\t\n\nz"
    for a, b in itertools.combinations(range(len(text) + 1), 2):
        assert list(split_paragraphs([text[:a], text[a:b], text[b:]])) == _paragraphs_whole(text)


def test_the_utf16_hint_comes_with_utf16_text_only(tmp_path: Path):
    without_mark = "plain ascii words".encode("utf-16-le")
    assert "utf-16" in binary_reason(without_mark, "utf-8")[0]
    assert "utf-16" not in binary_reason(b"\x00\x01\x02" + bytes(range(200, 256)), "utf-8")[0]


def test_a_paragraph_past_the_sample_limit_is_cut_at_line_breaks_whatever_the_chunking():
    from fedlm.data.textfiles import MAX_SAMPLE_CHARS, split_paragraphs

    # Prepare: one record per line and no blank line, 5 x the limit; then a short paragraph
    lines = [f"record {i:06d} " + "x" * (i % 50) for i in range(30_000)]
    text = "\n".join(lines) + "\n\nlast paragraph"
    assert len(text) > 5 * MAX_SAMPLE_CHARS
    # Execute: the same text cut into chunks of three sizes
    results = [list(split_paragraphs(text[i:i + size] for i in range(0, len(text), size)))
               for size in (1000, 65_536, 1 << 20)]
    # Assert
    assert results[0] == results[1] == results[2]
    pieces = results[0]
    assert pieces[-1] == "last paragraph" and len(pieces) > 5
    assert all(len(p) <= MAX_SAMPLE_CHARS for p in pieces)
    assert "\n".join(pieces[:-1]).split("\n") == lines  # every line once, in order, none split


def test_a_paragraph_without_whitespace_is_cut_hard_at_the_limit():
    from fedlm.data.textfiles import MAX_SAMPLE_CHARS, split_paragraphs

    text = "y" * (2 * MAX_SAMPLE_CHARS + 5)
    pieces = list(split_paragraphs([text]))
    assert [len(p) for p in pieces] == [MAX_SAMPLE_CHARS, MAX_SAMPLE_CHARS, 5]


def test_jsonl_lines_end_at_a_newline_only(tmp_path):
    from fedlm.data.textfiles import iter_jsonl_objects

    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text":\r "one"}\r\n{"text": "two"}\n')  # a bare CR is JSON whitespace, not a line end
    assert [(n, r["text"]) for n, r in iter_jsonl_objects(path)] == [(1, "one"), (2, "two")]
