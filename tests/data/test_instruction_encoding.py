"""Instruction folders read in data.encoding, at any depth, extensions in any case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlm.data.instructions import load_instruction_folder


def test_a_cp1252_client_nested_in_upper_case_jsonl_reads_with_its_encoding(tmp_path: Path):
    # Prepare
    (tmp_path / "a" / "deep").mkdir(parents=True)
    line = json.dumps({"prompt": "caf\u00e9?", "completion": "oui"}, ensure_ascii=False) + "\n"
    (tmp_path / "a" / "deep" / "X.JSONL").write_bytes(line.encode("cp1252") * 3)
    # Execute
    client = load_instruction_folder(tmp_path, encoding="cp1252", test_fraction=0.0).get("a")
    # Assert
    assert [c.messages[0].content for c in client.train] == ["caf\u00e9?"] * 3
    # {"prompt": "caf = 15 bytes: the cp1252 e-acute (0xE9) is at byte offset 15
    with pytest.raises(ValueError, match=r"X\.JSONL: not UTF-8 text \(invalid continuation byte at byte offset 15\)"):
        load_instruction_folder(tmp_path)
