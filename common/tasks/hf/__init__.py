"""Federated fine-tuning of Hugging Face transformers (LoRA adapters or full), on the stdlib corpus or local text.

Nothing is downloaded: models come from a local `save_pretrained` directory or the local Hugging Face cache.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere in this package
