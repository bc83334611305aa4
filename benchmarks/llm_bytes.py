"""Bytes on the wire per client per round: LoRA adapters (plain, FFA) vs full fine-tuning, by counting the
tensors of each task's federated state (float32, raw codec; no training needed). Models are built on the meta
device, so a large config costs no memory.

    python benchmarks/llm_bytes.py
"""

from __future__ import annotations

import json

import torch

from fedstream.common.tasks.hf.lora import wrap
from fedstream.common.tasks.hf.tiny_model import CONFIG


def configs() -> dict[str, object]:
    from transformers import GPT2Config, LlamaConfig

    return {
        "tiny Llama (CI model)": LlamaConfig(**CONFIG),
        "GPT-2 small (124M)": GPT2Config(),
        "Llama 1.1B (TinyLlama shape)": LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                                    num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    }


def federated_bytes(config: object, r: int, variant: str) -> tuple[int, int]:
    """(bytes of the trainable tensors, all parameters) for LoRA rank r (0: full fine-tuning)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = wrap(AutoModelForCausalLM.from_config(config), False, r, 16.0, 0.0, (), variant, 0)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def main() -> None:
    rows = []
    for name, config in configs().items():
        full, params = federated_bytes(config, 0, "plain")
        for label, r, variant in (("full fine-tuning", 0, "plain"), ("LoRA r=8", 8, "plain"), ("FFA-LoRA r=8", 8, "ffa"),
                                  ("LoRA r=32", 32, "plain")):
            nbytes = full if r == 0 else federated_bytes(config, r, variant)[0]
            rows.append({"model": name, "parameters": params, "what travels": label, "bytes_up": nbytes,
                         "bytes_per_round": 2 * nbytes, "full_over_this": round(full / nbytes, 1)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
