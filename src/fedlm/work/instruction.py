"""Client work "instruction": supervised fine-tuning on conversations, loss on the assistant's tokens only.

Each conversation is one sequence under the base model's chat template (fedlm.work.chat),
labelled on the assistant's tokens, right-padded to data.seq_len; a batch is trimmed to its
longest labelled row, which changes no loss. A conversation past data.seq_len is cut at its
end (data.overlong = "truncate") or left out ("drop"), and counted either way; one whose
prompt alone fills data.seq_len is refused with its file and line under "truncate", since
no response token would be trained. Instruction tuning as in FLAN and Alpaca (Wei et al.
2022, arXiv:2109.01652; Taori et al. 2023), federated as in OpenFedLLM (Ye et al. 2024,
arXiv:2402.06954) and FlowerTune.

Evaluation: the perplexity of the held-out responses, and (`eval.multiple_choice = "auto"`)
which of `eval.choice_options` replies follows a held-out prompt, the distractors being
other held-out replies; or a user's multiple-choice JSONL, each question asked as a user turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from fedlm.config import RunConfig
from fedlm.core.rng import make_rng
from fedlm.data.blocks import Blocks, concat_blocks, pad_sequences, trim_batch
from fedlm.data.conversations import Conversation
from fedlm.data.redaction import redact_client, redact_federation
from fedlm.data.types import FederatedDataset, Sample
from fedlm.eval.choice import ChoiceQuestion, option_tokens, read_choice_jsonl
from fedlm.eval.metrics import EvalResult
from fedlm.work.chat import LabelledSequence, label_conversation, prompt_tokens
from fedlm.work.language_model import attach_adapter, load_language_model, batch_loss, evaluate_set, load_configured_federation
from fedlm.work.protocol import Encoded, EvalSet


def check_conversations(samples: Sequence[Sample]) -> list[Conversation]:
    conversations = [s for s in samples if isinstance(s, Conversation)]
    if len(conversations) != len(samples):
        raise ValueError("task.kind = 'instruction' trains on conversations, but the data holds plain text; use JSONL "
                         "records (chat messages, prompt/completion or Alpaca), or task.kind = 'causal_lm'")
    return conversations


def fit_sequence(sequence: LabelledSequence, seq_len: int, overlong: str, source: str) -> LabelledSequence | None:
    """The sequence within `seq_len` tokens: as it is, cut at its end, or None (dropped)."""
    if len(sequence.input_ids) <= seq_len:
        return sequence
    if overlong == "drop":
        return None
    if sequence.prompt_length >= seq_len:
        raise ValueError(f"{source}: the prompt takes {sequence.prompt_length} tokens, data.seq_len = {seq_len} leaves no "
                         "room for the response; raise data.seq_len, shorten the prompt, or set data.overlong = 'drop'")
    return LabelledSequence(sequence.input_ids[:seq_len], sequence.labels[:seq_len])


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a padding nor an end-of-text token; padding needs one")
    return int(pad)


def last_reply(conversation: Conversation) -> tuple[list[dict[str, str]], str]:
    """(the messages before the last assistant turn, that turn's content)."""
    messages = conversation.as_dicts()
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@dataclass(frozen=True)
class InstructionWork:
    kind: ClassVar[str] = "instruction"
    encodes_up_front: ClassVar[bool] = True  # a prompt past seq_len, a template's refusal, a client emptied by "drop"
    config: RunConfig

    def load_federation(self) -> FederatedDataset:
        from fedlm.data.dialogue import load_shakespeare_dialogue

        return load_configured_federation(self, lambda **kw: redact_federation(
            load_shakespeare_dialogue(**kw), self.config.redaction, source=self.config.data.source))

    def load_folder(self, path: Path, *, test_fraction: float, seed: int) -> FederatedDataset:
        from fedlm.data.instructions import load_instruction_folder

        dataset = load_instruction_folder(Path(path), test_fraction=test_fraction, seed=seed,
                                          encoding=self.config.data.encoding)
        return redact_federation(dataset, self.config.redaction, source="folder")  # every message, before tokenization

    def read_client(self, path: Path) -> list[Sample]:
        from fedlm.data.instructions import read_instruction_client

        return redact_client(read_instruction_client(Path(path), encoding=self.config.data.encoding),
                             self.config.redaction)

    def encode(self, tokenizer: Any, samples: Sequence[Sample]) -> Encoded:
        data = self.config.data
        rows, truncated, dropped = [], 0, 0
        for conversation in check_conversations(samples):
            sequence = label_conversation(tokenizer, conversation)
            fitted = fit_sequence(sequence, data.seq_len, data.overlong, conversation.source or "conversation")
            if fitted is None:
                dropped += 1
                continue
            truncated += fitted is not sequence
            rows.append((fitted.input_ids, fitted.labels))
        return Encoded(pad_sequences(rows, data.seq_len, pad_id(tokenizer)), len(samples), truncated, dropped)

    def make_eval_set(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]], *, max_sequences: int) -> EvalSet:
        seq_len = self.config.data.seq_len
        encoded = [self.encode(tokenizer, samples[c]) for c in samples]
        blocks = concat_blocks([e.blocks for e in encoded], seq_len).head(max_sequences)
        return EvalSet(blocks, self.questions(tokenizer, samples), sum(e.truncated for e in encoded), sum(e.dropped for e in encoded))

    def questions(self, tokenizer: Any, samples: Mapping[str, Sequence[Sample]]) -> tuple[ChoiceQuestion, ...]:
        source, cap = self.config.eval.multiple_choice, self.config.eval.choice_questions
        if source == "off":
            return ()
        if source != "auto":
            return tuple(
                ChoiceQuestion(tuple(prompt_tokens(tokenizer, [{"role": "user", "content": r.question}], r.source)),
                               option_tokens(tokenizer, r.choices), r.answer)
                for r in read_choice_jsonl(Path(source))[:cap]
            )
        pool = [(client, *last_reply(c)) for client in samples for c in check_conversations(samples[client])]
        return next_reply_questions(tokenizer, pool, options=self.config.eval.choice_options, cap=cap, seed=self.config.run.seed)

    def loss(self, model: torch.nn.Module, batch: Blocks) -> torch.Tensor:
        return batch_loss(model, trim_batch(batch))

    def evaluate(self, model: torch.nn.Module, eval_set: EvalSet) -> EvalResult:
        return evaluate_set(model, eval_set, self.config, trim=True)

    def attach(self, base: Any) -> Any:
        return attach_adapter(base, self.config)

    def load_base(self) -> Any:
        return load_language_model(self.config)


def next_reply_questions(
    tokenizer: Any, pool: list[tuple[str, list[dict[str, str]], str]], *, options: int, cap: int, seed: int,
) -> tuple[ChoiceQuestion, ...]:
    """Which of `options` replies follows the prompt: the true one among replies to other prompts of the pool.

    `pool` holds (client, messages before the reply, reply). Up to `cap` prompts, taken in a
    seeded order of the pool, each question owned by its prompt's client; distractors are distinct replies drawn
    from the rest of the pool; the true reply's position is drawn too. Every option is cut to
    the length of the question's shortest one, in tokens: a longer reply collects more negative
    log-probability, so uncut options would reward the shortest rather than the one that
    follows. Empty when the pool has fewer than `options` distinct replies.
    """
    replies = sorted({reply for _, _, reply in pool})
    if len(replies) < options:
        return ()
    rng = make_rng(seed, "choice-questions")
    questions: list[ChoiceQuestion] = []
    for index in rng.permutation(len(pool)):
        if len(questions) == cap:
            break
        client, messages, reply = pool[index]
        others = [r for r in replies if r != reply]
        picked = [others[i] for i in rng.choice(len(others), size=options - 1, replace=False)]
        answer = int(rng.integers(options))
        picked.insert(answer, reply)
        encoded = option_tokens(tokenizer, picked)
        length = min(len(e) for e in encoded)
        options_cut = tuple(tuple(e[:length]) for e in encoded)
        if len(set(options_cut)) < options:  # cut to the same length, two options read alike: no fair question
            continue
        questions.append(ChoiceQuestion(tuple(prompt_tokens(tokenizer, messages)), options_cut, answer, client))
    return tuple(questions)
