"""The CI model: a small Llama config created from scratch with a fixed seed, briefly pretrained on the stdlib's
loose top-level modules (text no client trains on), and saved with save_pretrained, so every party loads the
same frozen base through the path users take (from_pretrained on a local directory).

`model=tiny` builds it once per machine and Python version into the cache directory ($FEDSTREAM_CACHE, else
~/.cache/fedstream); concurrent builders each write a private directory and the first rename wins, so every
process then loads the same files. Parties on different machines should share one directory (model=DIR).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from fedstream.common.tasks.hf import byte_tokenizer as tok
from fedstream.common.tasks.hf.examples import blocks
from fedstream.common.tasks.hf.stdlib_corpus import loose_modules, read_text

SEED = 0
PRETRAIN_STEPS = 120
PRETRAIN_BATCH = 8
PRETRAIN_LENGTH = 128
CONFIG = dict(vocab_size=tok.VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tok.BOS,
              eos_token_id=tok.EOS, pad_token_id=tok.PAD, tie_word_embeddings=False)


def build_tiny_model(out_dir: Path, pretrain_steps: int = PRETRAIN_STEPS) -> Path:
    """Creates, pretrains (deterministically, from SEED) and saves the CI model into out_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and on a busy machine far faster
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(LlamaConfig(**CONFIG))
        if pretrain_steps:
            text = read_text(loose_modules(), PRETRAIN_STEPS * PRETRAIN_BATCH * PRETRAIN_LENGTH)
            data = torch.tensor(blocks(text, PRETRAIN_LENGTH, 1 << 30), dtype=torch.long)
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
            generator = torch.Generator().manual_seed(SEED)
            model.train()
            for _ in range(pretrain_steps):
                batch = data[torch.randint(len(data), (PRETRAIN_BATCH,), generator=generator)]
                loss = model(input_ids=batch, labels=batch).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    torch.set_num_threads(threads)
    model.save_pretrained(out_dir)
    return out_dir


def cache_dir() -> Path:
    return Path(os.environ.get("FEDSTREAM_CACHE") or Path.home() / ".cache" / "fedstream")


def tiny_model_dir() -> Path:
    """The CI model's directory in the cache, built on first use."""
    target = cache_dir() / f"tiny-llama-v2-py{sys.version_info.major}{sys.version_info.minor}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny_model(scratch)
        try:
            os.rename(scratch, target)
        except OSError:  # another process got there first: use its copy
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
