"""Finding and loading the frozen base model: a local directory or the local Hugging Face cache, never the network."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedstream.common.tasks.hf import byte_tokenizer as tok


def resolve_model(spec: str) -> Path:
    """model=tiny, model=DIR (a save_pretrained directory) or model=HUB_ID already in the local cache."""
    if spec == "tiny":
        from fedstream.common.tasks.hf.tiny_model import tiny_model_dir

        return tiny_model_dir()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model={spec}: the directory has no config.json; save the model there with "
                             "save_pretrained")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not available locally"
        raise ValueError(f"model={spec}: not a directory, and not in the local Hugging Face cache ({HF_HUB_CACHE}); "
                         "nothing is downloaded at run time: save a model with save_pretrained and pass "
                         "model=DIR, or model=tiny for the built-in CI model") from None


def quantization(quantize: str) -> dict:
    """from_pretrained arguments for 4-bit base weights, or the reason they cannot be had here."""
    if quantize == "none":
        return {}
    if not torch.cuda.is_available():
        raise ValueError("--task-option quantize=4bit: bitsandbytes' 4-bit kernels run on CUDA GPUs and this process "
                         "sees none; drop quantize=4bit on CPU parties (the adapters keep their names, so a CPU "
                         "server federates with 4-bit GPU clients)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("--task-option quantize=4bit needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=torch.bfloat16),
            "device_map": {"": torch.cuda.current_device()}}


def load_base(path: Path, classify: bool, num_labels: int, quantize: str, seed: int, pad: int = tok.PAD) -> nn.Module:
    """The pretrained model; a new classification head is initialised from `seed`, the same in every party, and
    `pad` (the tokenizer's) is the padding id a classifier skips when it pools the last token."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load would flood every client's log
    extra = quantization(quantize)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if classify:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                       local_files_only=True, **extra)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **extra)
    model.config.pad_token_id = pad
    return model
