"""The model card of an encoder kind names MiniLM's Hub id and loads with the kind's transformers class."""

from __future__ import annotations

from fedlm.config import config_from_dict, config_to_dict
from fedlm.models.card import MINILM_HUB_ID, RunFacts, base_origin, model_card


def card_for(kind: str) -> str:
    config = config_to_dict(config_from_dict({"task": {"kind": kind}}))
    return model_card(RunFacts(config), base_origin(config["model"]["name"], "/unused"))


def test_the_encoder_kinds_default_to_minilm_with_lora_on_query_and_value():
    config = config_from_dict({"task": {"kind": "retrieval"}})
    assert (config.model.name, config.lora.target_modules) == ("minilm", ("query", "value"))
    kept = config_from_dict({"task": {"kind": "rerank"}, "model": {"name": "tiny-encoder"}, "lora": {"target_modules": ["key"]}})
    assert (kept.model.name, kept.lora.target_modules) == ("tiny-encoder", ("key",))
    assert config_from_dict({}).model.name == "smollm2"  # the language models keep theirs


def test_a_retrieval_card_is_a_feature_extraction_adapter_over_the_hub_minilm():
    card = card_for("retrieval")
    assert "pipeline_tag: feature-extraction" in card and f'base_model: "{MINILM_HUB_ID}"' in card
    assert f'AutoModel.from_pretrained("{MINILM_HUB_ID}")' in card and "on `query`, `value`" in card


def test_rerank_and_classify_cards_load_a_sequence_classifier():
    for kind in ("rerank", "classify"):
        card = card_for(kind)
        assert "pipeline_tag: text-classification" in card and "AutoModelForSequenceClassification.from_pretrained" in card
    assert "pipeline_tag: text-generation" in model_card(RunFacts(config_to_dict(config_from_dict({}))), base_origin("tiny", "/x"))


def test_a_head_kinds_card_loads_the_head_it_trained():
    rerank = card_for("rerank")
    config = config_to_dict(config_from_dict({"task": {"kind": "classify"}}))
    classify = model_card(RunFacts(config, summary={"labels": ["comedies", "tragedies"]}), base_origin("minilm", "/x"))
    assert f'from_pretrained("{MINILM_HUB_ID}", num_labels=1)' in rerank
    assert f'from_pretrained("{MINILM_HUB_ID}", num_labels=2, id2label={{"0": "comedies", "1": "tragedies"}})' in classify


def test_an_encoder_kinds_evaluation_reports_its_own_figures_not_perplexity():
    config = config_to_dict(config_from_dict({"task": {"kind": "retrieval"}}))
    row = {"loss": 2.5, "perplexity": 12.18, "accuracy": 0.25, "recall_at_10": 0.4, "mrr_at_10": 0.3, "queries": 8}
    records = [{"round": 1, "train_loss": 1.5, "eval": {**row, "recall_at_10": 0.45}}]
    card = model_card(RunFacts(config, summary={"base": row, "final": {**row, "recall_at_10": 0.45}}, records=records),
                      base_origin("minilm", "/x"))
    evaluation = card[card.index("## Evaluation"):card.index("## How to load")]
    assert "InfoNCE" in evaluation and "perplexity" not in evaluation
    assert "| recall_at_10 | 0.4000 | 0.4500 |" in evaluation and "| 1 | 1.5000 | 2.5000 | 0.4500 |" in evaluation
    assert "held-out recall@10" in evaluation
