"""A client's peak memory and seconds per local step on this machine's CPU (or a GPU with --device cuda):
LoRA vs full fine-tuning, with and without gradient checkpointing, for the tiny CI model and a ~125M config.

Each case runs in a fresh process (peak RSS is per process); the ~125M model is a GPT-2-small-shaped Llama
created from scratch with save_pretrained into a temporary directory, so the task loads it as a user's would.

    python benchmarks/llm_client_cost.py                      # all cases, one JSON line each
    python benchmarks/llm_client_cost.py --model 125m --lora-r 8 --checkpointing 0   # one case
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CASES = [("tiny", 8, 0), ("tiny", 0, 0), ("125m", 8, 0), ("125m", 8, 1), ("125m", 0, 0)]


def model_dir(name: str, scratch: Path) -> str:
    if name == "tiny":
        from fedstream.common.tasks.hf.tiny_model import tiny_model_dir

        return str(tiny_model_dir())
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from fedstream.common.tasks.hf import byte_tokenizer as tok

    hf_logging.disable_progress_bar()

    config = LlamaConfig(vocab_size=tok.VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024,
                         pad_token_id=tok.PAD, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(scratch / "m125")
    return str(scratch / "m125")


def one_case(args: argparse.Namespace) -> dict:
    from fedstream.common.tasks import TrainSettings, load_task

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        task = load_task("hf-causal-lm", {"model": model_dir(args.model, Path(scratch)), "lora_r": str(args.lora_r),
                                          "gradient_checkpointing": str(args.checkpointing), "group_blocks": "16",
                                          "max_length": str(args.max_length)})
        model = task.make_model().to(device)
    data = task.client_split(0, 1).train
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    generator = torch.Generator().manual_seed(0)
    warm = TrainSettings(batch_size=args.batch_size, learning_rate=1e-4, max_steps=1, amp=args.amp)
    task.train(model, data, warm, device, generator)
    timed = TrainSettings(batch_size=args.batch_size, learning_rate=1e-4, max_steps=args.steps, amp=args.amp)
    started = time.perf_counter()
    task.train(model, data, timed, device, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": args.model, "parameters": params, "trainable": trainable, "lora_r": args.lora_r,
            "checkpointing": args.checkpointing, "device": str(device), "amp": args.amp, "threads": args.threads,
            "batch": f"{args.batch_size}x{args.max_length}", "s_per_step": round(seconds, 3),
            "peak_memory_MB": round(peak / 2**20), "memory": "GPU allocated" if device.type == "cuda" else "RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "125m"], default=None, help="one case (default: all cases)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--checkpointing", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    if args.model is not None:
        print(json.dumps(one_case(args)), flush=True)
        return
    for model, r, checkpointing in CASES:
        subprocess.run([sys.executable, __file__, "--model", model, "--lora-r", str(r), "--checkpointing",
                        str(checkpointing), "--device", args.device, "--amp", args.amp, "--threads", str(args.threads),
                        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                        "--max-length", str(args.max_length)], check=True)


if __name__ == "__main__":
    main()
