"""Tests of instruction data: chat, TRL prompt-completion and Alpaca records read from JSONL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedlm.data.conversations import ConversationError
from fedlm.data.instructions import (
    load_instruction_folder,
    parse_record,
    read_instruction_client,
    read_instruction_jsonl,
)
from fedlm.data.types import client_rng, split_train_test

# A word that appears in record text; no error message may contain it.
SECRET = "PATIENT-7731"


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _write(path: Path, records: list[object]) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _pairs(conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conversation.messages]


# --- parse_record: the three shapes -------------------------------------------------------


def test_chat_record_keeps_every_message_and_ignores_extra_keys():
    # Prepare
    record = {
        "id": 12,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?", "name": "ann"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"},
        ],
    }
    # Execute
    conversation = parse_record(record, "f.jsonl, line 1")
    # Assert
    assert _pairs(conversation) == [
        ("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"), ("assistant", "6"),
    ]
    assert conversation.source == "f.jsonl, line 1"


def test_trl_string_prompt_and_completion_are_one_user_and_one_assistant_turn():
    # Execute
    conversation = parse_record({"prompt": "Capital of France?", "completion": " Paris."}, "s")
    # Assert
    assert _pairs(conversation) == [("user", "Capital of France?"), ("assistant", " Paris.")]


def test_trl_conversational_prompt_messages_come_before_completion_messages():
    # Prepare
    record = {
        "prompt": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Sky colour?"},
        ],
        "completion": [{"role": "assistant", "content": "Blue."}],
    }
    # Execute
    conversation = parse_record(record, "s")
    # Assert
    assert _pairs(conversation) == [("system", "You are terse."), ("user", "Sky colour?"), ("assistant", "Blue.")]


def test_alpaca_input_follows_the_instruction_after_a_blank_line():
    # Prepare
    record = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "text": "x"}
    # Execute
    conversation = parse_record(record, "s")
    # Assert
    assert _pairs(conversation) == [("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")]


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": " \n"}, {"input": None}])
def test_alpaca_without_input_is_the_instruction_alone(extra: dict):
    # Execute
    conversation = parse_record({"instruction": "Name a colour.", "output": "Red", **extra}, "s")
    # Assert
    assert _pairs(conversation) == [("user", "Name a colour."), ("assistant", "Red")]


def test_messages_win_over_a_prompt_next_to_them():
    # Prepare: ultrachat-style rows carry the first prompt beside the full conversation.
    record = {"prompt": "Hi", "prompt_id": "p1", **_chat("Hi", "Hello!")}
    # Execute
    conversation = parse_record(record, "s")
    # Assert
    assert _pairs(conversation) == [("user", "Hi"), ("assistant", "Hello!")]


# --- refusals, each on line 3 of a file after two good records ----------------------------

BAD_RECORDS = [
    ({"text": SECRET, "id": 3}, r'keys "id", "text"; expected one of: \{"messages".*\(chat\);.*\(TRL prompt-completion\);.*\(Alpaca\)'),
    ({"prompt": SECRET}, r'has "prompt" but no "completion"'),
    ({"instruction": SECRET, "input": ""}, r'has "instruction" but no "output"'),
    ({}, r"the record has no keys"),
    ({"messages": SECRET}, r'"messages" is a string, not a list of messages'),
    ({"messages": []}, r'"messages" is an empty list'),
    ({"messages": [SECRET]}, r'messages\[0\] is a string, not an object with "role" and "content"'),
    ({"messages": [{"content": SECRET}]}, r'messages\[0\] has no "role"'),
    ({"messages": [{"role": "user"}]}, r'messages\[0\] has no "content"'),
    ({"messages": [{"role": "user", "content": 42}]}, r'messages\[0\] "content" is a number, not a string'),
    ({"messages": [{"role": "user", "content": None}]}, r'messages\[0\] "content" is null, not a string'),
    ({"messages": [{"role": "human", "content": SECRET}]}, r"messages\[0\] has an unknown role; roles are system, user, assistant"),
    ({"messages": [{"role": "user", "content": SECRET}]}, r"no assistant turn"),
    ({"messages": [{"role": "assistant", "content": SECRET}]}, r"starts with the assistant"),
    (_chat(SECRET, " \n\t"), r"messages\[1\] is an assistant turn that is empty or only whitespace"),
    ({"prompt": SECRET, "completion": 7}, r'"prompt" is a string and "completion" is a number; both must be strings'),
    ({"prompt": SECRET, "completion": ""}, r'"completion" is an assistant turn that is empty or only whitespace'),
    ({"prompt": [{"role": "user", "content": SECRET}], "completion": []}, r'"completion" is an empty list'),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": SECRET}]},
     r'"completion" has no assistant turn'),
    ({"instruction": 5, "output": SECRET}, r'"instruction" is a number, not a string'),
    ({"instruction": SECRET, "input": [SECRET], "output": "y"}, r'"input" is a list, not a string'),
    ({"instruction": SECRET, "output": "  "}, r'"output" is an assistant turn that is empty or only whitespace'),
]


@pytest.mark.parametrize(("bad", "message"), BAD_RECORDS)
def test_a_bad_record_is_refused_with_file_line_and_what_is_wrong(tmp_path: Path, bad: dict, message: str):
    # Prepare
    path = _write(tmp_path / "clinic.jsonl", [_chat("a", "b"), _chat("c", "d"), bad, _chat("e", "f")])
    # Execute
    with pytest.raises(ConversationError) as caught:
        read_instruction_jsonl(path)
    # Assert
    text = str(caught.value)
    assert text.startswith(f"{path}, line 3: ")
    assert re.search(message, text), text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{" + SECRET, r"line 3: not valid JSON \("),
        (f'["{SECRET}"]', "line 3: expected a JSON object, got list"),
        ('"just a string"', "line 3: expected a JSON object, got str"),
    ],
)
def test_a_line_that_is_not_a_json_object_is_refused_with_file_and_line(tmp_path: Path, bad_line: str, message: str):
    # Prepare
    path = tmp_path / "clinic.jsonl"
    good = json.dumps(_chat("a", "b"))
    path.write_text(f"{good}\n{good}\n{bad_line}\n", encoding="utf-8")
    # Execute
    with pytest.raises(ValueError) as caught:
        read_instruction_jsonl(path)
    # Assert
    assert re.search(re.escape(f"{path}, ") + message, str(caught.value))
    assert SECRET not in str(caught.value)


def test_parse_record_refuses_a_record_that_is_not_an_object():
    with pytest.raises(ConversationError, match=r"^here: expected a JSON object, got a list$"):
        parse_record(["a"], "here")


# --- read_instruction_jsonl ---------------------------------------------------------------


def test_blank_lines_are_skipped_and_sources_count_every_line(tmp_path: Path):
    # Prepare: U+2028 inside a string must not split its line.
    path = tmp_path / "c.jsonl"
    first, second = json.dumps(_chat("a", "b")), json.dumps(_chat("x\u2028y", "z"), ensure_ascii=False)
    path.write_text(f"{first}\n   \n\n{second}\n", encoding="utf-8")
    # Execute
    conversations = read_instruction_jsonl(path)
    # Assert
    assert [c.source for c in conversations] == [f"{path}, line 1", f"{path}, line 4"]
    assert _pairs(conversations[1]) == [("user", "x\u2028y"), ("assistant", "z")]


@pytest.mark.parametrize("content", ["", "\n \n\t\n"])
def test_a_file_without_records_is_refused(tmp_path: Path, content: str):
    # Prepare
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match=re.escape(f"{path} holds no records")):
        read_instruction_jsonl(path)


def test_a_file_that_is_not_utf8_is_refused_with_its_name(tmp_path: Path):
    # Prepare
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(_chat("caf\u00e9", "ok"), ensure_ascii=False).encode("latin-1"))
    # Execute / Assert
    with pytest.raises(ValueError, match=re.escape(f"{path}: not UTF-8 text")):
        read_instruction_jsonl(path)


# --- read_instruction_client --------------------------------------------------------------


def test_a_client_file_is_read_whole(tmp_path: Path):
    # Prepare
    path = _write(tmp_path / "mine.jsonl", [_chat("a", "b"), {"prompt": "c", "completion": "d"}])
    # Execute
    conversations = read_instruction_client(path)
    # Assert
    assert [_pairs(c) for c in conversations] == [[("user", "a"), ("assistant", "b")], [("user", "c"), ("assistant", "d")]]


def test_a_client_folder_reads_its_jsonl_files_in_name_order_skipping_hidden_ones(tmp_path: Path):
    # Prepare
    _write(tmp_path / "b.jsonl", [_chat("b1", "B1")])
    _write(tmp_path / "a.jsonl", [_chat("a1", "A1"), _chat("a2", "A2")])
    _write(tmp_path / ".draft.jsonl", [_chat("hidden", "H")])
    (tmp_path / "notes.txt").write_text("not data", encoding="utf-8")
    # Execute
    conversations = read_instruction_client(tmp_path)
    # Assert
    assert [c.messages[0].content for c in conversations] == ["a1", "a2", "b1"]


def test_a_client_folder_without_jsonl_files_is_refused(tmp_path: Path):
    # Prepare
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match="holds no .jsonl files"):
        read_instruction_client(tmp_path)


def test_a_missing_client_path_or_a_non_jsonl_file_is_refused(tmp_path: Path):
    # Prepare
    other = tmp_path / "data.json"
    other.write_text("{}", encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match="does not exist"):
        read_instruction_client(tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match="neither a .jsonl file nor a folder of .jsonl files"):
        read_instruction_client(other)


# --- load_instruction_folder --------------------------------------------------------------


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    root = tmp_path / "clinic-net"
    (root / "bob").mkdir(parents=True)
    _write(root / "alice.jsonl", [_chat(f"alice q{i}", f"alice a{i}") for i in range(10)])
    _write(root / "bob" / "2.jsonl", [{"instruction": f"bob i{i}", "output": f"bob o{i}"} for i in range(3, 5)])
    _write(root / "bob" / "1.jsonl", [{"prompt": f"bob p{i}", "completion": f"bob c{i}"} for i in range(3)])
    _write(root / "solo.jsonl", [_chat("only", "one")])
    (root / "README.md").write_text("ignored", encoding="utf-8")
    (root / ".cache").mkdir()
    return root


def test_load_instruction_folder_reads_file_and_folder_clients(federation: Path):
    # Execute
    dataset = load_instruction_folder(federation)
    # Assert
    assert dataset.name == "clinic-net"
    assert dataset.client_ids() == ("alice", "bob", "solo")
    alice, bob, solo = (dataset.get(cid) for cid in dataset.client_ids())
    # 10 * 0.2 -> 2 test; 5 * 0.2 -> 1; a single conversation stays in train.
    assert (len(alice.train), len(alice.test)) == (8, 2)
    assert (len(bob.train), len(bob.test)) == (4, 1)
    assert (len(solo.train), len(solo.test)) == (1, 0)
    bob_prompts = sorted(c.messages[0].content for c in bob.train + bob.test)
    assert bob_prompts == ["bob i3", "bob i4", "bob p0", "bob p1", "bob p2"]


def test_load_instruction_folder_splits_with_the_client_rng(federation: Path):
    # Prepare
    conversations = read_instruction_client(federation / "bob")
    expected = split_train_test(conversations, test_fraction=0.4, rng=client_rng(5, "bob"))
    # Execute
    bob = load_instruction_folder(federation, test_fraction=0.4, seed=5).get("bob")
    # Assert
    assert (bob.train, bob.test) == expected


def test_load_instruction_folder_is_deterministic_and_seed_dependent(federation: Path):
    # Execute
    first, again = load_instruction_folder(federation, seed=3), load_instruction_folder(federation, seed=3)
    others = [load_instruction_folder(federation, seed=s).get("alice").test for s in range(4, 9)]
    # Assert
    assert first == again
    assert any(test != first.get("alice").test for test in others)


def test_duplicate_client_ids_are_refused(tmp_path: Path):
    # Prepare
    (tmp_path / "erin").mkdir()
    _write(tmp_path / "erin" / "a.jsonl", [_chat("a", "b")])
    _write(tmp_path / "erin.jsonl", [_chat("c", "d")])
    # Execute / Assert
    with pytest.raises(ValueError, match="duplicate client id 'erin'"):
        load_instruction_folder(tmp_path)


def test_a_bad_record_in_a_client_names_its_file_and_line(federation: Path):
    # Prepare
    _write(federation / "bob" / "3.jsonl", [_chat("a", "b"), _chat("c", "d"), {"messages": []}])
    # Execute / Assert
    with pytest.raises(ConversationError, match=re.escape(f"{federation / 'bob' / '3.jsonl'}, line 3: ")):
        load_instruction_folder(federation)


def test_missing_path_file_path_and_empty_folder_are_refused(tmp_path: Path):
    # Prepare
    file = _write(tmp_path / "x.jsonl", [_chat("a", "b")])
    empty = tmp_path / "empty"
    empty.mkdir()
    # Execute / Assert
    with pytest.raises(ValueError, match="does not exist"):
        load_instruction_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a folder"):
        load_instruction_folder(file)
    with pytest.raises(ValueError, match=r"holds no clients: expected <client_id>\.jsonl files"):
        load_instruction_folder(empty)


@pytest.mark.parametrize(("kwargs", "message"), [({"test_fraction": 1.0}, "test_fraction"), ({"seed": -1}, "seed")])
def test_bad_split_arguments_are_refused(federation: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        load_instruction_folder(federation, **kwargs)


def test_an_empty_jsonl_beside_good_ones_is_skipped_as_the_report_says(tmp_path):
    from fedlm.data.instructions import read_instruction_client

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    (tmp_path / "site" / "b.jsonl").write_text("\n  \n")
    assert len(read_instruction_client(tmp_path / "site")) == 1
    (tmp_path / "site" / "a.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no records"):
        read_instruction_client(tmp_path / "site")
