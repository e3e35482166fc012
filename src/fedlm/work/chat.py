"""A conversation as one training sequence: the chat template's tokens, labels on the assistant's only.

The template is the tokenizer's own (`tokenizer.apply_chat_template`) where it has one, else
FALLBACK_TEMPLATE below. Which characters the assistant wrote is found without parsing the
template: rendering the conversation up to message i with the generation prompt, and up to
message i included, brackets exactly what the template emits for assistant message i (its
content and end-of-turn marker; trailing whitespace is left out). Tokens that overlap those
spans keep their id as the label; every other token is -100, so the loss is the response's
only, as FlowerTune, OpenFedLLM and TRL's `assistant_only_loss` do. A template whose
rendering of a shorter conversation is not a prefix of the longer one cannot be bracketed
this way and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlm.data.conversations import Conversation

IGNORE = -100

# Used when the tokenizer has no chat template (documented in the README): Zephyr-style
# role tags, each message closed by the tokenizer's end-of-text token.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """The chat template cannot be bracketed into prompt and response."""


@dataclass(frozen=True)
class LabelledSequence:
    """Token ids and labels of one conversation (labels -100 outside assistant turns)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def prompt_length(self) -> int:
        """Tokens before the first labelled one: what the model reads before it first answers."""
        return next((i for i, label in enumerate(self.labels) if label != IGNORE), len(self.labels))


def template_of(tokenizer) -> str:
    return tokenizer.chat_template or FALLBACK_TEMPLATE


def render(tokenizer, messages: list[dict[str, str]], source: str, *, generation_prompt: bool = False) -> str:
    """The chat template's text; a template that refuses the conversation (say, roles that must alternate)
    raises TemplateError naming `source`, not the template engine's own exception."""
    from jinja2 import TemplateError as JinjaError

    try:
        return tokenizer.apply_chat_template(messages, chat_template=template_of(tokenizer), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except JinjaError as err:
        raise TemplateError(f"{source or 'conversation'}: the model's chat template refuses it: {err}") from None


def assistant_spans(tokenizer, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans [start, end) of every assistant turn in it."""
    messages, source = conversation.as_dicts(), conversation.source
    text = render(tokenizer, messages, source)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], source, generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], source).rstrip()
        if not (through.startswith(before) and text.startswith(through)):
            raise TemplateError(f"{conversation.source or 'conversation'}: the chat template does not render a conversation "
                                "as a prefix of its continuation, so the assistant's tokens cannot be found")
        spans.append((len(before), len(through)))
    return text, spans


def label_conversation(tokenizer, conversation: Conversation) -> LabelledSequence:
    """The conversation's tokens under the chat template, labelled on the assistant's tokens only."""
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("response-only labels need a fast (Rust) tokenizer: it reports each token's characters")
    text, spans = assistant_spans(tokenizer, conversation)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [tid if any(start < e and end > s for s, e in spans) else IGNORE
              for tid, (start, end) in zip(ids, offsets, strict=True)]
    return LabelledSequence(list(ids), labels)


def prompt_tokens(tokenizer, messages: list[dict[str, str]], source: str = "") -> list[int]:
    """The tokens a model reads before answering `messages` (the generation prompt included)."""
    return tokenizer(render(tokenizer, messages, source, generation_prompt=True), add_special_tokens=False)["input_ids"]
