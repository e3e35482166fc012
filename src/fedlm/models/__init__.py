"""Base language models and the LoRA adapters trained on top of them."""
