"""How text becomes token ids: the byte-level tokenizer (the default), or a model's own tokenizer loaded from
its directory (a pretrained model only makes sense with the tokenizer it was trained with)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedstream.common.tasks.hf import byte_tokenizer as tok


@dataclass(frozen=True)
class Encoding:
    encode: Callable[[str], list[int]]
    pad: int


BYTES = Encoding(tok.encode, tok.PAD)


def model_encoding(path: Path) -> Encoding:
    """The tokenizer saved beside the model (tokenizer.save_pretrained), loaded without the network."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--task-option tokenizer=model: no tokenizer could be loaded from {path} ({exc}); save one "
                         "there with tokenizer.save_pretrained, or use tokenizer=bytes") from None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"--task-option tokenizer=model: the tokenizer in {path} has neither a pad nor an eos token; "
                         "set tokenizer.pad_token and save it again")
    return Encoding(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], int(pad))
