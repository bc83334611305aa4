"""Wrapping a base model for federated fine-tuning: LoRA adapters (plain or FFA-LoRA) or every weight trainable,
and which trainable tensors stay on the client (local modules)."""

from __future__ import annotations

import torch
from torch import nn


def wrap(model: nn.Module, classify: bool, r: int, alpha: float, dropout: float, target_modules: tuple[str, ...],
         variant: str, seed: int) -> nn.Module:
    """LoRA of rank r on target_modules (peft's default set when empty); r = 0 trains every weight instead.

    Adapters start from `seed` in every party: B = 0 and A random. With variant "ffa" (FFA-LoRA, Sun et al.
    2024, https://arxiv.org/abs/2403.12313) A stays frozen at that shared start, so only B is trained and
    averaged, and the average of the updates B·A is exactly (mean B)·A.
    """
    if r == 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.SEQ_CLS if classify else TaskType.CAUSAL_LM, r=r, lora_alpha=alpha,
                        lora_dropout=dropout, target_modules=list(target_modules) or None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as exc:
            raise ValueError(f"--task-option target_modules: peft cannot place adapters: {exc}") from None
    if variant == "ffa":
        for name, p in wrapped.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    return wrapped


def is_local(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a tensor belongs to a local module: a pattern matches whole dotted parts of its name."""
    dotted = f".{name}."
    return any(f".{p}." in dotted for p in patterns)


def make_local_trainable(model: nn.Module, patterns: tuple[str, ...]) -> None:
    """Local modules train on each client and never travel; refuses patterns that match nothing."""
    for pattern in patterns:
        matched = [p for n, p in model.named_parameters() if is_local(n, (pattern,))]
        if not matched:
            names = sorted({n.rsplit(".", 1)[0] for n, _ in model.named_parameters()})
            raise ValueError(f"--task-option local_modules={pattern}: no module of the model is named so; "
                             f"modules with weights include {', '.join(names[-6:])}")
        for p in matched:
            p.requires_grad_(True)
