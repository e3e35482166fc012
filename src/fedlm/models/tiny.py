"""A tiny randomly initialised Llama and a byte-level tokenizer, for tests and quick runs.

Built locally from a fixed seed so that every machine gets identical weights without a
download: 2 layers, hidden size 64, a 257-token byte vocabulary.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_NAME = "tiny"
TINY_SEED = 1234
EOS = "<|endoftext|>"


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=257,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=256,
        pad_token_id=256,
    )


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: every byte is one token, plus an end-of-text token."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab[EOS] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=EOS)


def build_tiny(seed: int = TINY_SEED) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config())
    return model, build_tiny_tokenizer()
