"""Where the model runs and in what precision: `model.device`, `model.dtype`, `model.load_in_4bit`.

Everything between the update vectors is on the device; the vectors themselves stay float32
numpy at the boundary (core.vectors moves them with one transfer each way). 4-bit loading is
QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314)
through bitsandbytes' NF4 kernels, which exist for CUDA only: it is refused elsewhere with a
message saying why, not left to fail inside the library.
"""

from __future__ import annotations

import importlib.util

import torch

from fedlm.model_settings import DTYPES, is_device_name

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}


class DeviceError(ValueError):
    """The configured device, precision or quantization cannot run on this machine."""


def resolve_device(name: str) -> torch.device:
    """`model.device` as a torch device: "auto" picks cuda, else mps, else cpu; an absent device is refused."""
    if not is_device_name(name):
        raise DeviceError(f"model.device: unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if is_mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"model.device = {name!r}, but torch sees no CUDA device on this machine "
                              f"(torch {torch.__version__}); use 'cpu' or 'auto'")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"model.device = {name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    if kind == "mps" and not is_mps_available():
        raise DeviceError("model.device = 'mps', but torch sees no Apple GPU (MPS) on this machine; use 'cpu' or 'auto'")
    return torch.device(name)


def is_mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise DeviceError(f"model.dtype: unknown dtype {name!r}; use one of {DTYPES}") from None


def check_4bit(device: torch.device) -> None:
    """Refuse 4-bit loading off CUDA, or without bitsandbytes, before any weight is read."""
    if device.type != "cuda":
        raise DeviceError(f"model.load_in_4bit needs a CUDA device (bitsandbytes NF4 kernels); "
                          f"model.device resolves to {device.type!r} here")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DeviceError("model.load_in_4bit needs bitsandbytes: pip install 'fedlm[gpu]'")


def quantization_config(compute_dtype: torch.dtype):
    """NF4 with double quantization and `compute_dtype` matmuls: QLoRA's recipe."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go); the CPU for a model without any."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device
