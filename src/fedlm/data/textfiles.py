"""A client's files as samples: one streamed reader per format, in the configured text encoding.

Formats, by extension (any case):

- `.txt`, `.md`: paragraphs separated by blank lines; each paragraph, stripped, is one sample.
- `.jsonl`: one JSON object per line, its string "text" one sample (blank lines skipped).
- `.csv`: a header row naming a "text" column; each row's "text" cell is one sample
  (Python's csv module: RFC 4180 quoting, a cell may span lines).
- `.parquet`: a string column "text"; each value is one sample (read with pyarrow, when installed).

Samples that are empty or only whitespace are dropped. Text is decoded in chunks of about
1 MiB, so a file is never held whole beside its samples. Before that, a file's first block is
sniffed: a NUL character, or more than a tenth of control characters, marks it binary and it
is refused. A byte the encoding cannot decode is refused with its byte offset. Refusals name
the file and the line or byte offset, never the text.

Encodings are Python codec names; "utf-8" reads through "utf-8-sig", so a byte-order mark is
dropped, and "utf-16" reads either byte order after its mark. We decode with the standard
library rather than guess encodings (chardet and the like): a guess that is wrong for one file
would train on mojibake without a word, while a refusal names the file and the setting.
"""

from __future__ import annotations

import codecs
import csv
import encodings
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK_CHARS = 1 << 20  # text decoded per step (blocks.CHUNK_CHARS is what is tokenized at once): bounds memory
MAX_SAMPLE_CHARS = 1 << 16  # a longer paragraph is cut into samples of at most this (see split_paragraphs)
SNIFF_BYTES = 8192  # the first block, where binary files are told from text
CONTROL_SHARE = 0.1  # more than this share of control characters in the first block: binary
TEXT_COLUMN = "text"  # the field or column that holds a sample in JSONL, CSV and Parquet

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n")
_LAST_SPACE = re.compile(r"\s(?!.*\s)", re.DOTALL)  # the last whitespace character of the searched span
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # Unicode Cc, less tab, newlines, vertical tab, form feed
_INSTRUCTION_KEYS = ("messages", "prompt", "instruction")


class FileRefusal(ValueError):
    """A file that cannot be read as samples: why, and where (line or byte offset) when known."""

    def __init__(self, path: Path, reason: str, *, line: int | None = None, offset: int | None = None) -> None:
        super().__init__(path, reason, line, offset)
        self.path, self.reason, self.line, self.offset = Path(path), reason, line, offset

    def __str__(self) -> str:
        where = f", line {self.line}" if self.line is not None else ""
        return f"{self.path}{where}: {self.reason}"


def codec_name(encoding: str) -> str:
    """The standard library's name for the text codec `encoding`; ValueError naming data.encoding otherwise.

    Looked up among the standard library's codecs only: codecs.lookup also asks every codec
    search function that installed packages registered, and one may answer any name.
    """
    info = encodings.search_function(encoding.lower()) if isinstance(encoding, str) else None
    if info is None or not info._is_text_encoding:
        raise ValueError(f"data.encoding: {encoding!r} is not a text encoding Python knows (e.g. 'utf-8', 'cp1252', "
                         "'utf-16')")
    return info.name


def check_encoding(encoding: str) -> str:
    """`encoding` when it names a text codec of the standard library; ValueError naming data.encoding otherwise."""
    codec_name(encoding)
    return encoding


def decoder_name(encoding: str) -> str:
    """The codec that reads files in `encoding`: UTF-8 through "utf-8-sig", which drops a byte-order mark."""
    name = codec_name(encoding)
    return "utf-8-sig" if name == "utf-8" else name


def encoding_label(encoding: str) -> str:
    return codec_name(encoding).upper()


def binary_reason(head: bytes, encoding: str) -> tuple[str, int | None] | None:
    """(why, byte offset) when the first block `head` looks binary in `encoding`, else None."""
    name = codec_name(encoding)
    text = head.decode(name, errors="replace")
    nul = text.find("\0")
    if nul >= 0:
        ascii_nul = "\0".encode(name) == b"\0"
        offset = head.find(b"\0") if ascii_nul else len(text[:nul].encode(name, errors="replace"))
        hint = "; if it is UTF-16 text, set data.encoding = 'utf-16'" if ascii_nul and _looks_utf16(head) else ""
        return f"binary: a NUL character at byte offset {offset}{hint}", offset
    controls = len(_CONTROL.findall(text))
    if text and controls > CONTROL_SHARE * len(text):
        return f"binary: {controls} of its first {len(text)} characters are control characters", None
    return None


def _looks_utf16(head: bytes) -> bool:
    """A UTF-16 byte-order mark, or NUL in most even or most odd bytes (ASCII text in UTF-16 without a mark)."""
    half = len(head) // 2
    zeros = max(head[0::2].count(0), head[1::2].count(0))
    return head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (half >= 8 and zeros >= 0.4 * half)


def find_decode_error(path: Path, encoding: str) -> tuple[int, str]:
    """(byte offset, codec's reason) of the first byte of `path` that `encoding` cannot decode."""
    name = codec_name(encoding)  # plain UTF-8 here: a byte-order mark is valid UTF-8, offsets stay the file's
    decoder = codecs.getincrementaldecoder(name)(errors="strict")
    offset = 0
    with path.open("rb") as file:
        while True:
            block = file.read(CHUNK_CHARS)
            pending = len(decoder.getstate()[0])  # bytes held back from the last block (a character cut in two)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                return offset - pending + error.start, error.reason
            if not block:
                return offset, "undecodable"
            offset += len(block)


@contextmanager
def refusing_undecodable(path: Path, encoding: str) -> Iterator[None]:
    """Turn a UnicodeDecodeError raised in the block into a FileRefusal naming the file's byte offset."""
    try:
        yield
    except UnicodeDecodeError:
        offset, reason = find_decode_error(path, encoding)
        hint = "; set data.encoding to the file's encoding (e.g. 'cp1252')" if codec_name(encoding) == "utf-8" else ""
        raise FileRefusal(path, f"not {encoding_label(encoding)} text ({reason} at byte offset {offset}){hint}",
                          offset=offset) from None


def open_text(path: Path, encoding: str, *, newline: str | None = None) -> io.TextIOWrapper:
    """`path` for reading text in `encoding` (newlines translated unless `newline` says otherwise)."""
    return open(path, encoding=decoder_name(encoding), errors="strict", newline=newline)  # noqa: SIM115


def split_paragraphs(chunks: Iterable[str]) -> Iterator[str]:
    """The paragraphs (stripped, non-empty) of the text `chunks` join into, however it is cut.

    Only the last piece of each split can run on into the next chunk: a paragraph break is a
    newline, spaces or tabs, a newline, and one cut short by the chunk's end matches nothing,
    so it stays in that last piece and is matched whole once the next chunk arrives. A
    paragraph longer than MAX_SAMPLE_CHARS (a file of one record per line has no blank line
    at all) is cut into pieces of at most that, at its last line break (else whitespace)
    before the limit, so what is held and tokenized at once stays bounded.
    """
    pending = ""
    for chunk in chunks:
        pieces = _PARAGRAPH_BREAK.split(pending + chunk)
        pending = pieces.pop()
        for piece in pieces:
            yield from cut_long(piece)
        while len(pending) > MAX_SAMPLE_CHARS:  # a paragraph still running on: its head is complete
            head, pending = cut_head(pending)
            if head.strip():
                yield head.strip()
    yield from cut_long(pending)


def cut_head(text: str) -> tuple[str, str]:
    """(at most MAX_SAMPLE_CHARS of `text`, the rest), cut at the last line break, else whitespace, before the limit."""
    cut = text.rfind("\n", 0, MAX_SAMPLE_CHARS + 1)
    if cut <= 0:
        space = _LAST_SPACE.search(text, 0, MAX_SAMPLE_CHARS + 1)
        cut = space.start() if space and space.start() > 0 else MAX_SAMPLE_CHARS
    return text[:cut], text[cut:]


def cut_long(paragraph: str) -> Iterator[str]:
    """A complete paragraph, stripped, as pieces of at most MAX_SAMPLE_CHARS (nothing if it is blank)."""
    rest = paragraph.strip()
    while len(rest) > MAX_SAMPLE_CHARS:
        head, rest = cut_head(rest)
        if head.strip():
            yield head.strip()
        rest = rest.strip()
    if rest:
        yield rest


def read_chunks(file: io.TextIOBase, size: int = CHUNK_CHARS) -> Iterator[str]:
    while chunk := file.read(size):
        yield chunk


def iter_paragraphs(path: Path, encoding: str) -> Iterator[str]:
    """The paragraphs of a .txt or .md file."""
    with open_text(path, encoding) as file, refusing_undecodable(path, encoding):
        yield from split_paragraphs(read_chunks(file))


def iter_jsonl_objects(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of the JSONL file `path`.

    Lines end at a newline only (U+2028 inside a string does not end one). A line that is not
    valid JSON or not a JSON object is refused with its line number; the line is never quoted.
    """
    with open_text(path, encoding, newline="\n") as file, refusing_undecodable(path, encoding):
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise FileRefusal(path, f"not valid JSON ({error.msg})", line=number) from None
            if not isinstance(record, dict):
                raise FileRefusal(path, f"expected a JSON object, got {type(record).__name__}", line=number)
            yield number, record


def jsonl_text(path: Path, number: int, record: dict) -> str:
    """The string "text" of one JSONL record; FileRefusal naming the line otherwise."""
    text = record.get(TEXT_COLUMN)
    if not isinstance(text, str):
        found = "no field" if text is None else f"a {type(text).__name__}"
        hint = ("; these look like instruction records: set task.kind = 'instruction'"
                if any(key in record for key in _INSTRUCTION_KEYS) else "")
        raise FileRefusal(path, f'expected a string "text" field, found {found}{hint}', line=number)
    return text


def iter_jsonl_texts(path: Path, encoding: str) -> Iterator[str]:
    for number, record in iter_jsonl_objects(path, encoding):
        text = jsonl_text(path, number, record)
        if text.strip():
            yield text


def iter_jsonl_records(path: Path, encoding: str) -> Iterator[dict]:
    """Every JSON object of a JSONL file, whatever its fields (instruction records are parsed later)."""
    return (record for _, record in iter_jsonl_objects(path, encoding))


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _column_list(names: list[str]) -> str:
    shown = ", ".join(f'"{name[:40]}"' for name in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "") if names else "none"


def iter_csv_texts(path: Path, encoding: str) -> Iterator[str]:
    """The "text" cell of every row of a CSV file with a header row."""
    with open_text(path, encoding, newline="") as file, refusing_undecodable(path, encoding), _csv_field_limit(1 << 30):
        reader = csv.reader(file)
        try:
            header = next(reader, [])
            if TEXT_COLUMN not in header:
                raise FileRefusal(path, f'no "text" column in the header row (columns: {_column_list(header)})', line=1)
            column = header.index(TEXT_COLUMN)
            for row in reader:
                if not row:
                    continue
                if column >= len(row):
                    raise FileRefusal(path, f"a row of {len(row)} cells has no \"text\" cell (column {column + 1})",
                                      line=reader.line_num)
                if row[column].strip():
                    yield row[column]
        except csv.Error as error:
            raise FileRefusal(path, f"not valid CSV ({error})", line=reader.line_num) from None


def iter_parquet_texts(path: Path, encoding: str) -> Iterator[str]:
    """The string column "text" of a Parquet file, in row groups (`encoding` is unused: Parquet strings are UTF-8)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FileRefusal(path, "reading Parquet needs pyarrow, which is not installed (pip install pyarrow)") from None
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        raise FileRefusal(path, "not a readable Parquet file") from None
    schema = parquet.schema_arrow
    if TEXT_COLUMN not in schema.names:
        raise FileRefusal(path, f'no "text" column (columns: {_column_list(list(schema.names))})')
    kind = schema.field(TEXT_COLUMN).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise FileRefusal(path, f'the "text" column holds {kind}, not strings')
    for batch in parquet.iter_batches(batch_size=4096, columns=[TEXT_COLUMN]):
        yield from (text for text in batch.column(0).to_pylist() if text is not None and text.strip())


Reader = Callable[[Path, str], Iterator[object]]

# What plain-text work (task.kind = "causal_lm") reads, by extension.
TEXT_READERS: dict[str, Reader] = {
    ".txt": iter_paragraphs, ".md": iter_paragraphs, ".jsonl": iter_jsonl_texts,
    ".csv": iter_csv_texts, ".parquet": iter_parquet_texts,
}
# What instruction work reads: JSONL records, whose conversations fedlm.data.instructions parses.
RECORD_READERS: dict[str, Reader] = {".jsonl": iter_jsonl_records}
_BINARY_FORMATS = (".parquet",)


def iter_file_samples(path: Path, encoding: str, readers: dict[str, Reader] = TEXT_READERS) -> Iterator[object]:
    """The samples of one file, by the reader its extension names; a binary text file is refused first."""
    suffix = path.suffix.lower()
    if suffix not in _BINARY_FORMATS:
        with path.open("rb") as file:
            found = binary_reason(file.read(SNIFF_BYTES), encoding)
        if found is not None:
            raise FileRefusal(path, found[0], offset=found[1])
    yield from readers[suffix](path, encoding)
