"""Classify work: loss and accuracy by hand, the federation's label set, labelled JSONL, genres, a short run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from fedlm.config import ConfigError, RedactionSettings, RunConfig, apply_overrides
from fedlm.data.labelled import genre_labels, load_genre_plays, read_labelled_client
from fedlm.data.plays import play_genres
from fedlm.data.redaction import redact_client
from fedlm.data.types import LabelledText
from fedlm.retrieval.encoder import build_tiny_encoder_tokenizer
from fedlm.sim.engine import simulate
from fedlm.sim.setup import prepare
from fedlm.work import make_work
from fedlm.work.classify import LabelledSet, score_labelled

HEAD = "classifier.modules_to_save"
TOKENIZER = build_tiny_encoder_tokenizer()
INTENTS = {"billing": "My invoice {k} shows a charge I do not know.", "greeting": "Hello there, friend number {k}!",
           "weather": "Will it rain on day {k} this week?"}


class FixedLogits(torch.nn.Module):
    """A stand-in model: row i of `table` is the logits of any text whose first token is i."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


def test_classify_loss_and_accuracy_by_a_worked_example():
    # Prepare: three texts (first tokens 0, 1, 2) labelled 0, 1, 0; logits [2, 0], [0, 0], [1, 3].
    model = FixedLogits([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    samples = LabelledSet(((0, 9), (1,), (2, 9, 9)), (0, 1, 0), pad_id=0)
    # Execute
    result = score_labelled(model, samples, batch_size=2)
    # Assert: cross-entropies log(1 + e^-2), log 2, log(1 + e^2); only the first argmax is right (a tie picks 0).
    expected = math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.exp(2))  # 2.947003
    assert result.loss_sum == pytest.approx(expected, abs=1e-5)
    assert (result.tokens, result.correct) == (3, 1)
    assert result.accuracy == pytest.approx(1 / 3)
    batch = samples.take([0, 2])
    assert batch.input_ids.tolist() == [[0, 9, 0], [2, 9, 9]] and batch.labels.tolist() == [0, 0]
    assert batch.num_tokens == 5


def write_intents(root, clients=4, per_client=8, skew=True):
    """`clients` JSONL files of labelled texts; with `skew`, client i holds mostly label i mod 3."""
    root.mkdir()
    labels = sorted(INTENTS)
    for c in range(clients):
        rows = []
        for k in range(per_client):
            label = labels[(c + (k % 4 == 3)) % 3] if skew else labels[k % 3]
            rows.append(json.dumps({"text": INTENTS[label].format(k=k + 10 * c), "label": label}))
        (root / f"site{c}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def classify_config(path, **overrides) -> RunConfig:
    settings = {
        "model": {"name": "tiny-encoder"}, "task": {"kind": "classify"},
        "data": {"source": "folder", "path": str(path), "seq_len": 64, "test_fraction": 0.25},
        "federation": {"rounds": 2, "clients_per_round": 3},
        "client": {"local_steps": 2, "batch_size": 4, "lr": 1e-2},
        "eval": {"mode": "held_out", "clients": 1, "max_sequences": 8},
    }
    for table, values in overrides.items():
        settings[table] = {**settings.get(table, {}), **values}
    return apply_overrides(RunConfig(), settings)


def test_the_label_set_is_the_folders_sorted_labels_and_the_head_has_one_output_each(tmp_path):
    # Execute
    work = make_work(classify_config(write_intents(tmp_path / "fed")))
    adapter = work.attach(work.load_base())
    head = {e.shape for e in adapter.shared_spec.entries if HEAD in e.name}
    # Assert: billing, greeting, weather -> outputs 0, 1, 2; the head (3 x 32 weights, 3 biases) is in the update.
    assert work.labels() == ("billing", "greeting", "weather")
    assert head == {(3, 32), (3,)}
    encoded = work.encode(TOKENIZER, [LabelledText("hi", "weather"), LabelledText("yo", "billing")])
    assert encoded.blocks.labels == (2, 0) and encoded.samples == 2


def test_join_data_with_a_label_outside_the_run_is_refused_naming_it(tmp_path):
    # Prepare: the run's labels are billing, greeting, weather; this client also has "refund".
    work = make_work(classify_config(write_intents(tmp_path / "fed")))
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"text": "money back", "label": "refund"}) + "\n"
                    + json.dumps({"text": "hi", "label": "greeting"}) + "\n", encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match=r"'refund'.*'billing', 'greeting', 'weather'"):
        work.read_client(mine)


def test_a_client_without_the_runs_data_folder_is_told_where_the_labels_come_from(tmp_path):
    work = make_work(classify_config(tmp_path / "server-only"))
    with pytest.raises(ConfigError, match=r"^data\.path: .*label set"):
        work.labels()


def test_a_labelled_line_without_a_label_is_refused_with_its_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "x", "label": "a"}) + "\n" + json.dumps({"text": "secret words"}) + "\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r'a\.jsonl, line 2: expected a string "label" field, found no field') as error:
        read_labelled_client(path)
    assert "secret" not in str(error.value)


def test_plain_text_is_refused_by_the_classifier(tmp_path):
    work = make_work(classify_config(write_intents(tmp_path / "fed")))
    with pytest.raises(ValueError, match="labelled texts"):
        work.encode(TOKENIZER, ["just text"])


def test_redaction_replaces_the_text_and_keeps_the_label():
    (sample,) = redact_client([LabelledText("mail ana@example.org now", "billing")], RedactionSettings(enabled="on"))
    assert sample == LabelledText("mail <EMAIL> now", "billing")
    assert "ana" not in repr(sample) and "billing" not in repr(sample)


def test_the_embedded_plays_give_each_client_its_plays_genre_only():
    dataset = load_genre_plays(min_chars=80)
    genres = play_genres()
    labels = {c.client_id: {s.label for s in (*c.train, *c.test)} for c in dataset.clients}
    assert all(found == {genres[client]} for client, found in labels.items())
    assert len(set().union(*labels.values())) == len(genre_labels()) == 6  # every genre is some client's


def test_a_short_classify_run_reports_finite_loss_and_accuracy_and_moves_the_head(tmp_path):
    # Prepare
    sim = prepare(classify_config(write_intents(tmp_path / "fed")))
    # Execute
    result = simulate(sim)
    # Assert: samples counted as "tokens"; the loss starts near log 3 (a head of three outputs at init).
    figures = result.records[-1]["eval"]
    assert math.isfinite(figures["loss"]) and 0 <= figures["accuracy"] <= 1 and figures["tokens"] == 2
    assert result.base_eval.loss == pytest.approx(math.log(3), abs=0.05)
    moved = result.state.global_vector - sim.adapter.initial_shared
    assert all(abs(moved[e.offset : e.stop]).max() > 0 for e in sim.adapter.shared_spec.entries if HEAD in e.name)
