"""With redaction on, no planted personal value reaches the tokenizer, the update, the store or a log.

Issue 15's end-to-end check, for both drivers: a site folder with an e-mail address, a phone
number, an IBAN and a card number planted in its text. Every byte a run leaves behind (run
directory, the service's database and blobs) and every log record is searched for them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import conftest
from fedlm.cli.main import app
from fedlm.config import RunConfig, apply_overrides, config_to_dict
from fedlm.service.local_trainer import LocalTrainer
from fedlm.updates import wire

PLANTED = ("ana.lopez@example.org", "+44 20 7946 0958", "DE89 3704 0044 0532 0130 00", "4111 1111 1111 1111")


def write_site(folder: Path, site: int) -> None:
    folder.mkdir(parents=True)
    lines = [f"Note {i} of site {site}: write to {PLANTED[0]} or call {PLANTED[1]}; refund to IBAN {PLANTED[2]}, "
             f"card {PLANTED[3]} on file." for i in range(12)]
    (folder / "notes.txt").write_text("\n\n".join(lines), encoding="utf-8")


def leaks(texts: list[str] | list[bytes]) -> list[str]:
    """The planted values found in any of `texts` (as text, or as UTF-8 bytes; digits without spaces too)."""
    found = []
    for value in PLANTED:
        forms = {value, value.replace(" ", "")}
        for text in texts:
            data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
            if any(form.encode() in data for form in forms):
                found.append(value)
                break
    return found


def every_file(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def test_a_simulated_run_keeps_every_planted_value_out_of_its_data_files_and_logs(tmp_path, caplog):
    # Prepare
    for site in range(3):
        write_site(tmp_path / "sites" / f"site{site}", site)
    out = tmp_path / "run"
    # Execute
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(app, ["simulate", "--model", "tiny", "--data", str(tmp_path / "sites"), "--out",
                                          str(out), "--rounds", "1", "--clients-per-round", "3", "--seq-len", "64", "-q"])
    # Assert: the run used redacted text (the placeholders reached training) and left no value anywhere
    assert result.exit_code == 0, result.output
    assert leaks(every_file(out)) == []
    assert leaks([r.getMessage() for r in caplog.records] + [result.output]) == []
    assert '"EMAIL": 36' in (out / "summary.json").read_text()  # 12 lines x 3 sites, counted not quoted
