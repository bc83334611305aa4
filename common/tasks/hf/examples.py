"""Text turned into the tensors a task trains on: fixed-length byte blocks (causal LM) or padded rows with labels."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fedstream.common.tasks.hf import byte_tokenizer as tok
from fedstream.common.tasks.hf.stdlib_corpus import HELD_OUT, package_groups, read_text
from fedstream.common.tasks.hf.text_encoding import BYTES, Encoding

TEST_EVERY = 10  # data=PATH: every 10th example is the server's held-out set


@dataclass
class Examples:
    """Training rows with the group (package) of each, and the server's held-out rows."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    groups: torch.Tensor  # group index of each training row; all 0 when the data has no groups
    group_names: list[str]
    test_x: torch.Tensor
    test_y: torch.Tensor


def blocks(text: str, length: int, limit: int, encode: "Callable[[str], list[int]]" = tok.encode) -> list[list[int]]:
    """The text's tokens cut into at most `limit` consecutive blocks of exactly `length` tokens."""
    ids = encode(text)
    return [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)][:limit]


def shuffled_lines(block: list[int], seed: int) -> list[int]:
    """The block with its lines in a random order (the corrupted class of the stdlib classification task)."""
    lines = bytes(block).split(b"\n")
    random.Random(seed).shuffle(lines)
    return list(b"\n".join(lines))


def _rows(rows: list[list[int]], classify: bool, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets: next-token labels, or class labels (even rows intact, odd rows line-shuffled)."""
    if not classify:
        x = torch.tensor(rows, dtype=torch.long) if rows else torch.empty(0, 1, dtype=torch.long)
        return x, tok.lm_labels(x, pad)
    labels = [i % 2 for i in range(len(rows))]
    mixed = [shuffled_lines(r, i) if y else r for i, (r, y) in enumerate(zip(rows, labels))]
    return torch.tensor(mixed, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def stdlib_examples(length: int, group_blocks: int, eval_blocks: int, classify: bool,
                    encoding: Encoding = BYTES) -> Examples:
    groups = package_groups()
    train_names = [g for g in groups if g not in HELD_OUT]
    rows, owners = [], []
    for index, name in enumerate(train_names):
        got = blocks(read_text(groups[name], length * group_blocks + length), length, group_blocks, encoding.encode)
        rows += got
        owners += [index] * len(got)
    held = [b for name in HELD_OUT if name in groups
            for b in blocks(read_text(groups[name], length * eval_blocks + length), length, eval_blocks,
                            encoding.encode)]
    held = held[:: max(1, len(held) // eval_blocks)][:eval_blocks]  # spread over every held-out package
    train_x, train_y = _rows(rows, classify, encoding.pad)
    test_x, test_y = _rows(held, classify, encoding.pad)
    return Examples(train_x, train_y, torch.tensor(owners, dtype=torch.long), train_names, test_x, test_y)


def read_lines(path: Path) -> list[dict]:
    """Examples of a .txt (one text a line) or .jsonl file ({"text": ..., "label": ...} a line), or a directory."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise ValueError(f"data={path}: the directory holds no .txt or .jsonl files")
        return [row for f in files for row in read_lines(f)]
    if not path.is_file():
        raise ValueError(f"data={path}: no such file or directory; use data=stdlib or a .txt/.jsonl path")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            out.append({"text": line})
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"data={path} line {number}: not JSON ({exc.msg}); one object a line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"data={path} line {number}: needs a string field \"text\"")
        out.append(row)
    return out


def file_examples(path: Path, length: int, classify: bool, num_labels: int, encoding: Encoding = BYTES) -> Examples:
    rows = read_lines(path)
    ids = tok.padded([encoding.encode(r["text"]) for r in rows], length, encoding.pad)
    if classify:
        labels = []
        for number, row in enumerate(rows, 1):
            label = row.get("label")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_labels:
                raise ValueError(f"data={path} example {number}: label {label!r}; expected an integer in "
                                 f"[0, {num_labels}) (set num_labels=K for K classes)")
            labels.append(label)
        y = torch.tensor(labels, dtype=torch.long)
    else:
        y = tok.lm_labels(ids, encoding.pad)
    test = torch.arange(len(rows)) % TEST_EVERY == TEST_EVERY - 1
    return Examples(ids[~test], y[~test], torch.zeros(int((~test).sum()), dtype=torch.long), [], ids[test], y[test])


def load_examples(data: str, length: int, group_blocks: int, eval_blocks: int, classify: bool,
                  num_labels: int, encoding: Encoding = BYTES) -> Examples:
    if data == "stdlib":
        if classify and encoding is not BYTES:
            raise ValueError("hf-sequence-classification with data=stdlib shuffles the lines of byte blocks; use "
                             "tokenizer=bytes, or data=PATH with labelled examples")
        return stdlib_examples(length, group_blocks, eval_blocks, classify, encoding)
    return file_examples(Path(data).expanduser(), length, classify, num_labels, encoding)
