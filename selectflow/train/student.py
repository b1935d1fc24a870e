"""The comparison's student: a tiny causal LM whose weights have seen no text at all.

:func:`build_scratch_student` writes a seeded, randomly initialised Llama-style decoder and a
BPE tokenizer trained on text that ships with Python and is disjoint from any instruction
pool: the help topics of the Python Language Reference (``pydoc_data.topics``). The weights
learn nothing before the fine-tune, so whatever the student knows after it, it learnt from the
selection it was fine-tuned on; the tokenizer only decides how text is cut into tokens (a
byte-level one, built from no text, makes every character a token, and a tiny model then
needs several times the steps to learn the same records). Saved with ``save_pretrained``
(safetensors) and loaded back through ``from_pretrained`` like any model folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from selectflow.runtime.fsutil import atomic_dir

log = logging.getLogger(__name__)

STUDENT_INFO = "student.json"
TOKENIZER_CORPUS = "pydoc_data.topics"


def tokenizer_corpus() -> list[str]:
    """The texts the student's tokenizer is trained on: Python's help topics, in key order."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def build_scratch_student(
    out_dir: str | os.PathLike, *, seed: int, hidden: int, layers: int, vocab_size: int, max_positions: int
) -> Path:
    """Write the seeded from-scratch student (model + tokenizer + ``student.json``) to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selectflow.data.demo import _train_tokenizer

    tokenizer = _train_tokenizer(tokenizer_corpus(), vocab_size)
    heads = max(1, hidden // 16)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    info = {
        "kind": "scratch",
        "seed": seed,
        "hidden": hidden,
        "layers": layers,
        "weights_trained_on": [],
        "tokenizer_trained_on": TOKENIZER_CORPUS,
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / STUDENT_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    log.info(
        "student from scratch: %d parameters, vocabulary %d (%s), seed %d -> %s",
        info["parameters"],
        len(tokenizer),
        TOKENIZER_CORPUS,
        seed,
        out_dir,
    )
    return Path(out_dir)
