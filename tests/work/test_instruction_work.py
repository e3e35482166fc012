"""Instruction work: encoding at data.seq_len (cut, dropped, refused), padding and trimming, the kinds' data checks."""

from __future__ import annotations

import pytest
import torch

from fedlm.config import RunConfig, apply_overrides
from fedlm.data.blocks import IGNORE, Blocks, trim_batch
from fedlm.data.conversations import make_conversation
from fedlm.models.base import load_base_model
from fedlm.models.tiny import build_tiny_tokenizer
from fedlm.work import make_work
from fedlm.work.chat import label_conversation

TOKENIZER = build_tiny_tokenizer()  # one token per byte: lengths follow from the text
# Under the fallback template a prompt "<|user|>\n" + text + eos + "\n" + "<|assistant|>\n" is 9 + len + 1 + 1 + 14
# tokens, and a reply adds len + eos + "\n".
SHORT = make_conversation([("user", "Hi"), ("assistant", "Yo")], source="a.jsonl, line 1")  # 27 + 4 = 31 tokens
LONG = make_conversation([("user", "Hi"), ("assistant", "x" * 40)], source="a.jsonl, line 2")  # 27 + 42 = 69
LONG_PROMPT = make_conversation([("user", "q" * 60), ("assistant", "ok")], source="a.jsonl, line 3")


def work(**data):
    return make_work(apply_overrides(RunConfig(), {"task": {"kind": "instruction"}, "data": {"seq_len": 32, **data}}))


def test_lengths_of_the_fixtures_under_the_fallback_template():
    assert len(label_conversation(TOKENIZER, SHORT).input_ids) == 31
    assert len(label_conversation(TOKENIZER, LONG).input_ids) == 69
    assert label_conversation(TOKENIZER, LONG).prompt_length == 27
    assert label_conversation(TOKENIZER, LONG_PROMPT).prompt_length == 85


def test_a_long_conversation_is_cut_at_seq_len_and_counted():
    # Execute
    encoded = work().encode(TOKENIZER, [SHORT, LONG])
    # Assert: both rows kept, the long one cut to 32 tokens (its first 5 reply tokens labelled), the short one padded.
    assert (encoded.samples, encoded.truncated, encoded.dropped, len(encoded.blocks)) == (2, 1, 0, 2)
    assert encoded.blocks.input_ids.shape == (2, 32)
    full = label_conversation(TOKENIZER, LONG)
    assert encoded.blocks.input_ids[1].tolist() == full.input_ids[:32]
    assert int((encoded.blocks.labels[1] != IGNORE).sum()) == 32 - 27
    assert encoded.blocks.labels[0, 31:].eq(IGNORE).all() and encoded.blocks.input_ids[0, 31:].eq(TOKENIZER.pad_token_id).all()


def test_overlong_drop_leaves_the_long_conversation_out_and_counts_it():
    encoded = work(overlong="drop").encode(TOKENIZER, [SHORT, LONG, LONG_PROMPT])
    assert (encoded.samples, encoded.truncated, encoded.dropped, len(encoded.blocks)) == (3, 0, 2, 1)


def test_a_prompt_longer_than_seq_len_is_refused_with_file_and_line():
    with pytest.raises(ValueError, match=r"a\.jsonl, line 3: the prompt takes 85 tokens, data\.seq_len = 32"):
        work().encode(TOKENIZER, [SHORT, LONG_PROMPT])


def test_plain_text_under_instruction_and_conversations_under_causal_lm_are_refused():
    with pytest.raises(ValueError, match="task.kind = 'instruction' trains on conversations"):
        work().encode(TOKENIZER, ["plain text"])
    causal = make_work(RunConfig())
    with pytest.raises(ValueError, match="set task.kind = 'instruction'"):
        causal.encode(TOKENIZER, [SHORT])


def test_trimming_a_right_padded_batch_changes_no_loss():
    # Prepare: the tiny model, a batch whose rows end well before seq_len.
    model = load_base_model("tiny").model
    w = work(seq_len=64)
    batch = w.encode(TOKENIZER, [SHORT, make_conversation([("user", "Hello"), ("assistant", "Hey you")])]).blocks
    # Execute
    trimmed = trim_batch(batch)
    padded_loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
    trimmed_loss = w.loss(model, batch)
    # Assert: the trim removes the padded tail, and the loss is the same to float precision.
    assert trimmed.input_ids.shape[1] == int((batch.labels != IGNORE).nonzero()[:, 1].max()) + 1 < 64
    torch.testing.assert_close(trimmed_loss, padded_loss, rtol=0, atol=1e-6)


def test_trim_of_a_batch_without_labels_keeps_one_column():
    batch = Blocks(torch.zeros((2, 8), dtype=torch.long), torch.full((2, 8), IGNORE))
    assert trim_batch(batch).input_ids.shape == (2, 1)


def test_a_client_whose_every_conversation_is_dropped_stops_the_run_before_round_1_and_counts_nothing(tmp_path):
    # Prepare: a federation where client "long" holds only conversations past seq_len.
    import json

    from fedlm.sim.setup import prepare

    (tmp_path / "ok.jsonl").write_text("\n".join(json.dumps({"prompt": "Hi", "completion": "Yo"}) for _ in range(4)))
    (tmp_path / "ok2.jsonl").write_text("\n".join(json.dumps({"prompt": "Hey", "completion": "Yo"}) for _ in range(4)))
    (tmp_path / "long.jsonl").write_text("\n".join(json.dumps({"prompt": "Hi", "completion": "x" * 80}) for _ in range(4)))
    config = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "task": {"kind": "instruction"},
                                           "data": {"source": "folder", "path": str(tmp_path), "seq_len": 40,
                                                    "overlong": "drop"},
                                           "eval": {"clients": 1, "multiple_choice": "off"}})
    # Execute / Assert: preparing the run refuses it, naming the client.
    message = r"client 'long' has no training sequence left: its 3 samples"
    with pytest.raises(ValueError, match=message):
        prepare(config)
    # And a lazily encoding simulation (a worker's) refuses the client without counting or caching anything.
    sim = prepare(config, encode_all=False)
    with pytest.raises(ValueError, match=message):
        sim.train_blocks("long")
    assert "long" not in sim.train_cache and sim.data_counts == {}
