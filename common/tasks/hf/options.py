"""The task options of the Hugging Face tasks: each arrives as a string, is checked, and unknown keys are refused."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable


def _int(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError
        return value
    parse.expects = f"an integer >= {low}"  # type: ignore[attr-defined]
    return parse


def _float(low: float, high: float | None = None, open_low: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if value != value or (value <= low if open_low else value < low) or (high is not None and value >= high):
            raise ValueError
        return value
    parse.expects = (f"a number {'>' if open_low else '>='} {low}"  # type: ignore[attr-defined]
                     + (f" and < {high}" if high is not None else ""))
    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError
        return text
    parse.expects = "one of " + ", ".join(allowed)  # type: ignore[attr-defined]
    return parse


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not all(n.replace("_", "").replace(".", "").replace("-", "").isalnum() for n in names):
        raise ValueError
    return names


_names.expects = "comma-separated module names such as q_proj,v_proj"  # type: ignore[attr-defined]


def _text(text: str) -> str:
    if not text:
        raise ValueError
    return text


_text.expects = "a non-empty value"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class HFOptions:
    """Every option with its default; `--task-option key=value` sets one."""

    model: str = "tiny"  # a save_pretrained directory, a hub id in the local cache, or tiny (the CI model)
    data: str = "stdlib"  # stdlib, or a .txt/.jsonl file or a directory of them (one example a line)
    lora_r: int = 8  # adapter rank; 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_variant: str = "plain"  # plain: A and B train; ffa: A frozen from lora_seed, only B travels
    lora_seed: int = 0  # seeds the adapters' (and a new head's) initialisation, the same in every party
    target_modules: tuple[str, ...] = ()  # () = peft's default for the architecture (q_proj,v_proj for Llama)
    local_modules: tuple[str, ...] = ()  # trainable, never federated (personalisation), e.g. score or lm_head
    max_length: int = 128
    num_labels: int = 2
    steps: int = 10  # local optimiser steps per round
    batch_size: int = 8
    lr: float = 1e-3
    group_blocks: int = 64  # data=stdlib: blocks of max_length bytes read from each package
    eval_blocks: int = 64  # data=stdlib: blocks of the held-out packages the server evaluates on
    gradient_checkpointing: int = 0
    quantize: str = "none"  # 4bit: bitsandbytes NF4 base weights (CUDA only)
    tokenizer: str = "bytes"  # bytes: byte-level, no files; model: the tokenizer saved in the model's directory


PARSERS: dict[str, Callable[[str], object]] = {
    "model": _text, "data": _text, "lora_r": _int(0), "lora_alpha": _float(0.0), "lora_dropout": _float(0.0, 1.0, False),
    "lora_variant": _choice("plain", "ffa"), "lora_seed": _int(0), "target_modules": _names, "local_modules": _names,
    "max_length": _int(8), "num_labels": _int(2), "steps": _int(0), "batch_size": _int(1), "lr": _float(0.0),
    "group_blocks": _int(1), "eval_blocks": _int(1), "gradient_checkpointing": _choice("0", "1"),
    "quantize": _choice("none", "4bit"), "tokenizer": _choice("bytes", "model"),
}
CLASSIFICATION_ONLY = {"num_labels"}


def parse_options(task: str, options: dict[str, str]) -> HFOptions:
    """Checks every key and value; the first problem is one ValueError naming the option and the fix."""
    known = [f.name for f in fields(HFOptions) if task == "hf-sequence-classification" or f.name not in CLASSIFICATION_ONLY]
    values: dict[str, object] = {}
    for key, text in options.items():
        if key not in known:
            raise ValueError(f"--task-option {key}={text}: unknown option for {task}; known: {', '.join(known)}")
        parser = PARSERS[key]
        try:
            value = parser(text.strip())
        except ValueError:
            raise ValueError(f"--task-option {key}={text}: expected {parser.expects}") from None  # type: ignore[attr-defined]
        values[key] = int(value) if key == "gradient_checkpointing" else value
    parsed = HFOptions(**values)  # type: ignore[arg-type]
    if parsed.lora_r == 0 and parsed.lora_variant == "ffa":
        raise ValueError("--task-option lora_variant=ffa needs adapters; lora_r=0 is full fine-tuning (set lora_r >= 1)")
    return parsed
