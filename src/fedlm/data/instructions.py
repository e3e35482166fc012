"""Instruction-tuning data as JSON Lines: one conversation per line, in three shapes.

Each line is a JSON object in one of the ecosystem's three conventions (extra keys ignored):

- chat: `{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}`,
  the message list of OpenAI's Chat Completions API, which Hugging Face chat templates
  (`tokenizer.apply_chat_template`) and TRL's conversational data take as is.
- prompt-completion, from TRL's "Dataset formats and types" (SFTTrainer):
  `{"prompt": ..., "completion": ...}`, both strings (the prompt becomes one user turn, the
  completion one assistant turn) or both lists of chat messages (TRL's conversational
  prompt-completion: the prompt's messages, then the completion's).
- Alpaca (Taori et al., 2023, github.com/tatsu-lab/stanford_alpaca):
  `{"instruction": str, "input": str, "output": str}`; "input" may be absent, null or empty.
  The user turn is the instruction, followed by a blank line and the input when the input
  is not blank; the assistant turn is the output.

When a record has the keys of several shapes, the first in this order wins (some hubs ship
a "prompt" next to "messages"). An assistant turn that is empty or only whitespace is refused:
there is nothing to learn from it. Every error names the file and line and says what is
wrong; it may quote key names and roles, never the text of a record.

A federation on disk is a folder with one client per `<client_id>.jsonl` file or per
`<client_id>/` sub-folder of .jsonl files (both may be mixed); each client's conversations
are split into train/test with its own generator, as in `fedlm.data.folders`.
"""

from __future__ import annotations

from pathlib import Path

from fedlm.data.conversations import ROLES, Conversation, ConversationError, Message
from fedlm.data.folders import list_files, load_client_folders, read_jsonl_objects
from fedlm.data.types import FederatedDataset

_SHAPES = (
    '{"messages": [{"role", "content"}, ...]} (chat)',
    '{"prompt", "completion"} (TRL prompt-completion)',
    '{"instruction", "input" (optional), "output"} (Alpaca)',
)
_SHAPE_KEYS = (("messages",), ("prompt", "completion"), ("instruction", "output"))

# A message with the name of the field it came from ("messages[2]", '"output"'), for errors.
Labelled = list[tuple[str, Message]]


def _kind(value: object) -> str:
    """The JSON kind of `value`, with its article: "a string", "a number", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    names = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def _text(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise ConversationError(f'{where}: no "{key}"')
    value = record[key]
    if not isinstance(value, str):
        raise ConversationError(f'{where}: "{key}" is {_kind(value)}, not a string')
    return value


def _message(item: object, label: str, where: str) -> Message:
    if not isinstance(item, dict):
        raise ConversationError(f'{where}: {label} is {_kind(item)}, not an object with "role" and "content"')
    for key in ("role", "content"):
        if key not in item:
            raise ConversationError(f'{where}: {label} has no "{key}"')
        if not isinstance(item[key], str):
            raise ConversationError(f'{where}: {label} "{key}" is {_kind(item[key])}, not a string')
    if item["role"] not in ROLES:
        raise ConversationError(f"{where}: {label} has an unknown role; roles are {', '.join(ROLES)}")
    return Message(item["role"], item["content"])


def _messages(value: object, key: str, where: str) -> Labelled:
    if not isinstance(value, list):
        raise ConversationError(f'{where}: "{key}" is {_kind(value)}, not a list of messages')
    if not value:
        raise ConversationError(f'{where}: "{key}" is an empty list')
    return [(f"{key}[{i}]", _message(item, f"{key}[{i}]", where)) for i, item in enumerate(value)]


def _conversation(labelled: Labelled, where: str) -> Conversation:
    for label, message in labelled:
        if message.role == "assistant" and not message.content.strip():
            raise ConversationError(
                f"{where}: {label} is an assistant turn that is empty or only whitespace, so nothing to learn"
            )
    return Conversation(tuple(message for _, message in labelled), where)


def _parse_chat(record: dict, where: str) -> Conversation:
    return _conversation(_messages(record["messages"], "messages", where), where)


def _parse_prompt_completion(record: dict, where: str) -> Conversation:
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        labelled = [('"prompt"', Message("user", prompt)), ('"completion"', Message("assistant", completion))]
        return _conversation(labelled, where)
    if isinstance(prompt, list) and isinstance(completion, list):
        answer = _messages(completion, "completion", where)
        if not any(message.role == "assistant" for _, message in answer):
            raise ConversationError(f'{where}: "completion" has no assistant turn, so nothing to learn')
        return _conversation(_messages(prompt, "prompt", where) + answer, where)
    raise ConversationError(
        f'{where}: "prompt" is {_kind(prompt)} and "completion" is {_kind(completion)}; '
        "both must be strings or both lists of messages"
    )


def _parse_alpaca(record: dict, where: str) -> Conversation:
    instruction, output = _text(record, "instruction", where), _text(record, "output", where)
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise ConversationError(f'{where}: "input" is {_kind(extra)}, not a string')
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return _conversation([('"instruction"', Message("user", user)), ('"output"', Message("assistant", output))], where)


_PARSERS = (_parse_chat, _parse_prompt_completion, _parse_alpaca)


def _unknown_shape(record: dict, where: str) -> str:
    keys = sorted(str(key)[:40] for key in record)
    shown = ", ".join(f'"{key}"' for key in keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
    found = f"the record has keys {shown}" if keys else "the record has no keys"
    hint = ""
    for shape in _SHAPE_KEYS:
        present = [key for key in shape if key in record]
        if present:
            missing = [key for key in shape if key not in record]
            hint = f' (it has "{present[0]}" but no "{missing[0]}")'
            break
    return f"{where}: {found}{hint}; expected one of: {'; '.join(_SHAPES)}"


def parse_record(record: object, source: str) -> Conversation:
    """The conversation in one JSON record (chat, TRL prompt-completion or Alpaca shape).

    Raises ConversationError, naming `source`, for a record of no known shape, a field of
    the wrong type, or a conversation that `Conversation` refuses.
    """
    if not isinstance(record, dict):
        raise ConversationError(f"{source}: expected a JSON object, got {_kind(record)}")
    for keys, parse in zip(_SHAPE_KEYS, _PARSERS, strict=True):
        if all(key in record for key in keys):
            return parse(record, source)
    raise ConversationError(_unknown_shape(record, source))


def read_instruction_jsonl(path: Path, *, encoding: str = "utf-8") -> list[Conversation]:
    """The conversation on every non-blank line of `path`; sources read "<path>, line <n>".

    Raises ValueError naming the file (and line or byte offset) for text that `encoding`
    cannot decode, a line that is not a JSON object or not a conversation, or a file without records.
    """
    path = Path(path)
    records = read_jsonl_objects(path, encoding=encoding)
    conversations = [parse_record(record, f"{path}, line {n}") for n, record in records]
    if not conversations:
        raise ValueError(f"{path} holds no records: expected one JSON object per line")
    return conversations


def read_instruction_client(path: Path, *, encoding: str = "utf-8") -> list[Conversation]:
    """One client's conversations: a .jsonl file, or every .jsonl file below a folder (any depth, path order)."""
    path = Path(path)
    if path.is_dir():
        files = list_files(path, ".jsonl")
        if not files:
            raise ValueError(f"client folder {path} holds no .jsonl files")
        # a file of blank lines only is skipped, as `fedlm data check` reports it; a bad line is refused
        conversations = [parse_record(record, f"{file}, line {n}") for file in files
                         for n, record in read_jsonl_objects(file, encoding=encoding)]
        if not conversations:
            raise ValueError(f"client folder {path} holds no records: its .jsonl files are empty")
        return conversations
    if not path.exists():
        raise ValueError(f"path {path} does not exist")
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"path {path} is neither a .jsonl file nor a folder of .jsonl files")
    return read_instruction_jsonl(path, encoding=encoding)


def load_instruction_folder(
    path: Path, *, test_fraction: float = 0.2, seed: int = 0, encoding: str = "utf-8",
) -> FederatedDataset:
    """The federation in `path`: one client per `<client_id>.jsonl` file or sub-folder of them.

    The data set is named after the folder; each client is split by `make_client`. Raises
    ValueError for a missing path, a folder with no clients, a duplicate client id, or a bad
    file or record (file and line given).
    """
    return load_client_folders(
        path, lambda _client_id, source: read_instruction_client(source, encoding=encoding),
        "<client_id>.jsonl files or <client_id>/ sub-folders of .jsonl files", test_fraction=test_fraction, seed=seed,
    )
