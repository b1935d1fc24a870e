"""The one padding rule of the router dump, the trainer and the encoder; a record's token ids.

* :func:`pad_token_id`: padded positions are always masked out (attention mask, ignored
  labels), so any id in the vocabulary pads correctly; the rule only has to give one. A
  tokenizer's pad token when it has one, else its eos token, else id 0, logged once per tokenizer.
* :func:`encode_pair` → the token ids of prompt + response + eos (the router dump's and the
  demo model's pre-training sequence) and the prompt's length;
* :func:`pad_batch` → right-padded ``ids`` and ``mask`` (int64 ``[B, T]``) of such sequences.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def pad_token_id(tokenizer) -> int:
    """The id that pads batches for ``tokenizer``: pad, else eos, else 0 (with a warning)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    if not getattr(tokenizer, "_selectflow_pad_warned", False):
        log.warning(
            "tokenizer %s has neither a pad nor an eos token; padding with id 0 (padded positions are "
            "masked out); set pad_token in its tokenizer_config.json to choose another",
            getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        )
        try:
            tokenizer._selectflow_pad_warned = True
        except AttributeError:
            pass
    return 0


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response + eos, cut to ``max_length``; and the prompt's length.

    Prompt and response are tokenised separately so the response tokens are exactly
    those scored, whatever the tokenizer does at the boundary.
    """
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    r = tokenizer(response, add_special_tokens=False).input_ids
    if tokenizer.eos_token_id is not None:
        r = r + [tokenizer.eos_token_id]
    return (p + r)[:max_length], min(len(p), max_length)


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (int64 ``[len(seqs), longest]``) of token-id lists."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask
