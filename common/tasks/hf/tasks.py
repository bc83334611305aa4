"""The two Hugging Face tasks, `hf-causal-lm` and `hf-sequence-classification`.

Only the trainable tensors (LoRA adapters, plus a classification head; every weight when lora_r=0) are the
task's federated state: they travel and are aggregated; the frozen base never does, and local modules stay on
their client. With data=stdlib every client gets whole packages (`--partition I/N`: package k goes to client
k mod N), and every client holds out each 10th of its examples to score its personalised model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedstream.common.training.partition import partition_indices
from fedstream.common.tasks.base import ClientSplit, Task, TrainSettings
from fedstream.common.tasks.hf import byte_tokenizer as tok
from fedstream.common.tasks.hf.examples import load_examples
from fedstream.common.tasks.hf.lora import is_local, make_local_trainable, wrap
from fedstream.common.tasks.hf.model_loading import load_base, resolve_model
from fedstream.common.tasks.hf.options import HFOptions, parse_options
from fedstream.common.tasks.hf.text_encoding import BYTES, model_encoding

PERSONAL_EVERY = 10
EVAL_BATCH = 32
PRUNING_REFUSAL = ("magnitude pruning zeroes the smallest entries of the tensors that travel; with adapters those "
                   "are the LoRA factors, whose product B·A stays dense, while the frozen base it would have to "
                   "thin never travels (and B starts at zero, so every entry is 'smallest'); prune the merged "
                   "model after the run instead, or use lora_r=0 (full fine-tuning) with --prune-schedule")


def causal_lm_loss(out: object, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy; padding (label -100) is not scored."""
    logits = out.logits[:, :-1].float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=tok.IGNORE, reduction=reduction)


def classification_loss(out: object, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return nn.functional.cross_entropy(out.logits.float(), labels, reduction=reduction)


@dataclass
class HFTask(Task):
    """A Task whose federated state is its trainable, non-local tensors."""

    options: HFOptions = field(default_factory=HFOptions)
    model_path: Path | None = None
    classify: bool = False
    groups: torch.Tensor | None = None  # package index of each training example (data=stdlib)

    def federated_state(self, model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((name, p.detach()) for name, p in model.named_parameters()
                           if p.requires_grad and not is_local(name, self.options.local_modules))

    def load_federated_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Copies the federated tensors of `state` into the model (others it names, e.g. the frozen base from a
        server that sends everything, are checked and ignored); a tensor missing, unknown or misshapen is refused."""
        own = model.state_dict()
        wanted = self.federated_state(model)
        missing = [n for n in wanted if n not in state]
        unknown = [n for n in state if n not in own]
        if missing or unknown:
            raise ValueError(f"the received model state lacks {len(missing)} federated tensor(s) ({missing[:3]}) and "
                             f"names {len(unknown)} unknown one(s) ({unknown[:3]}); were server and client started "
                             "with the same --task and lora_* / target_modules options?")
        for name in wanted:
            if tuple(state[name].shape) != tuple(own[name].shape):
                raise ValueError(f"tensor {name} arrived with shape {list(state[name].shape)}; this model has "
                                 f"{list(own[name].shape)} (same model= and lora_r= on every party?)")
        model.load_state_dict({n: state[n] for n in wanted}, strict=False)

    def client_split(self, index: int, parts: int, scheme: str = "iid", alpha: float = 0.5,
                     seed: int = 0) -> ClientSplit:
        """Whole packages per client with data=stdlib, else an IID share; each 10th example held out."""
        x, y = self.train_data.tensors
        if self.groups is not None and self.options.data == "stdlib":
            if scheme != "iid":
                raise ValueError(f"--partition-scheme {scheme}: data=stdlib deals whole packages to clients "
                                 "(package k to client k mod N); drop --partition-scheme")
            mine = torch.nonzero(self.groups % parts == index).flatten()
        else:
            mine = partition_indices(torch.zeros(len(x), dtype=torch.long), index, parts, scheme, alpha, seed)
        held = torch.arange(len(mine)) % PERSONAL_EVERY == PERSONAL_EVERY - 1
        train, personal = mine[~held], mine[held]
        return ClientSplit(TensorDataset(x[train], y[train]), TensorDataset(x[personal], y[personal]))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TensorDataset, device: torch.device,
                 batch_size: int = EVAL_BATCH) -> dict[str, float]:
        """Loss and accuracy (next-token accuracy for a language model, which also reports perplexity)."""
        model.eval()
        loss_sum, correct, scored = 0.0, 0, 0
        x_all, y_all = data.tensors
        step = max(1, min(batch_size, EVAL_BATCH))
        for start in range(0, len(x_all), step):
            x, y = x_all[start : start + step].to(device), y_all[start : start + step].to(device)
            out = model(input_ids=x)
            loss_sum += float(self.loss_fn(out, y, reduction="sum"))
            if self.classify:
                correct += int((out.logits.argmax(-1) == y).sum())
                scored += len(y)
            else:
                target = y[:, 1:]
                keep = target != tok.IGNORE
                correct += int(((out.logits[:, :-1].argmax(-1) == target) & keep).sum())
                scored += int(keep.sum())
        loss = loss_sum / max(scored, 1)
        metrics = {"loss": loss, "accuracy": correct / max(scored, 1)}
        if not self.classify:
            metrics["perplexity"] = math.exp(min(loss, 50.0))
        return metrics


def _make(task_name: str, options: dict[str, str]) -> HFTask:
    opts = parse_options(task_name, options)
    classify = task_name == "hf-sequence-classification"
    path = resolve_model(opts.model)
    encoding = model_encoding(path) if opts.tokenizer == "model" else BYTES
    examples = load_examples(opts.data, opts.max_length, opts.group_blocks, opts.eval_blocks, classify, opts.num_labels,
                             encoding)
    if len(examples.train_x) == 0:
        raise ValueError(f"data={opts.data}: no training example of max_length={opts.max_length} tokens")

    def make_model() -> nn.Module:
        base = load_base(path, classify, opts.num_labels, opts.quantize, opts.lora_seed, encoding.pad)
        model = wrap(base, classify, opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.target_modules,
                     opts.lora_variant, opts.lora_seed)
        make_local_trainable(model, opts.local_modules)
        if opts.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()  # from_pretrained returns eval mode; Opacus's check wants training mode

    return HFTask(
        name=task_name,
        make_model=make_model,
        train_data=TensorDataset(examples.train_x, examples.train_y),
        test_data=TensorDataset(examples.test_x, examples.test_y),
        defaults=TrainSettings(local_epochs=1, batch_size=opts.batch_size, learning_rate=opts.lr,
                               max_steps=opts.steps),
        make_optimizer=lambda params, s: torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=0.0),
        loss_fn=classification_loss if classify else causal_lm_loss,
        unsupported={"pruning": PRUNING_REFUSAL} if opts.lora_r > 0 else {},
        options=opts,
        model_path=path,
        classify=classify,
        groups=examples.groups if examples.group_names else None,
    )


def make_causal_lm_task(options: dict[str, str]) -> HFTask:
    return _make("hf-causal-lm", options)


def make_sequence_classification_task(options: dict[str, str]) -> HFTask:
    return _make("hf-sequence-classification", options)
