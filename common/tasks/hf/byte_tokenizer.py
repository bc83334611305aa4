"""A byte-level tokenizer: every UTF-8 byte is a token, plus three specials. No vocabulary file, no download."""

from __future__ import annotations

import torch

BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 260  # 256 bytes, BOS, EOS, PAD and one spare id
IGNORE = -100  # label of a position that is not scored (torch's cross_entropy ignore_index)


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids: list[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def padded(rows: list[list[int]], length: int, pad: int = PAD) -> torch.Tensor:
    """Rows cut to `length` and right-padded with `pad`, as one [len(rows), length] long tensor."""
    out = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:length]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def lm_labels(input_ids: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Next-token labels for a causal LM: the inputs themselves, padding not scored."""
    return input_ids.masked_fill(input_ids == pad, IGNORE)
