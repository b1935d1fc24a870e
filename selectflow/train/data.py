"""Supervised fine-tuning samples: records → token tensors → padded micro-batches.

* :func:`load_training_pairs` reads a JSONL of original records (Alpaca / ShareGPT /
  messages, format detected per line, as ``selected_data.jsonl`` holds them) or of
  normalised records (``prompt`` / ``response``) into ``(sample_id, prompt, response)``.
* :func:`encode_pair` → ``input_ids`` and ``labels`` (int32 ``[T]``, ``T <= max_length``):
  prompt and response are tokenised separately and concatenated, an eos closes the
  response, and prompt positions are labelled ``-100`` so the loss covers response tokens
  only.
* :class:`TokenizedDataset` tokenises on access (one sample per ``__getitem__``).
* :func:`pad_collate` right-pads a list of samples to ``input_ids`` / ``attention_mask`` /
  ``labels`` (int64 ``[B, T_max]``), optionally on a target device.
* :func:`epoch_order` and :func:`plan_steps` fix which samples each optimizer step sees,
  counted in samples so that the plan does not depend on the micro-batch size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from selectflow.data.records import iter_jsonl, record_prompt_response
from selectflow.runtime.errors import SelectFlowError

IGNORE_INDEX = -100


def load_training_pairs(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Read ``(sample_id, prompt, response)`` from a JSONL of original or normalised records."""
    path = Path(path)
    if not path.is_file():
        raise SelectFlowError(f"training data {path} does not exist; run the selection step first or fix the path")
    pairs = [record_to_pair(record, f"{path}:{lineno}") for lineno, record in iter_jsonl(path)]
    if not pairs:
        raise SelectFlowError(f"training data {path} holds no records; the selection is empty")
    return pairs


def record_to_pair(record: dict, where: str) -> tuple[str, str, str]:
    """One record (normalised or original) → ``(sample_id, prompt, response)``."""
    sample_id = str(record.get("sample_id", record.get("id", where)))
    try:
        prompt, response = record_prompt_response(record)
    except (ValueError, KeyError) as exc:
        raise SelectFlowError(f"{where}: {exc}; fix or remove this record") from None
    return sample_id, prompt, response


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise one pair into ``input_ids`` / ``labels`` (int32 ``[T]``).

    When prompt + response exceed ``max_length``, the response keeps at least half the
    window (or all of itself if shorter) and the prompt keeps its end, nearest the response.
    """
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        r = r + [tokenizer.eos_token_id]
    if len(p) + len(r) > max_length:
        keep_r = max(max_length - len(p), min(len(r), max_length // 2))
        r = r[:keep_r]
        p = p[len(p) - (max_length - len(r)) :]
    ids = torch.tensor(p + r, dtype=torch.int32)
    labels = ids.clone()
    labels[: len(p)] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels}


class TokenizedDataset(torch.utils.data.Dataset):
    """``pairs[i]`` tokenised on access by :func:`encode_pair`."""

    def __init__(self, pairs: list[tuple[str, str, str]], tokenizer, max_length: int):
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        _, prompt, response = self.pairs[index]
        return encode_pair(self.tokenizer, prompt, response, self.max_length)


def pad_collate(
    items: list[dict[str, torch.Tensor]], pad_id: int, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad samples to one int64 batch; on ``device`` when given (else where the items are)."""
    from torch.nn.utils.rnn import pad_sequence

    target = device if device is not None else items[0]["input_ids"].device
    ids = [it["input_ids"].to(target, non_blocking=True).long() for it in items]
    labels = [it["labels"].to(target, non_blocking=True).long() for it in items]
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id)
    mask = pad_sequence([torch.ones_like(t) for t in ids], batch_first=True, padding_value=0)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
    }


def epoch_order(n_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation fixed by ``(seed, epoch)`` alone."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples).tolist()


def steps_per_epoch(n_samples: int, effective_batch: int) -> int:
    return -(-n_samples // effective_batch)


def plan_steps(
    orders: dict[int, list[int]], n_samples: int, effective_batch: int, seed: int, first_step: int, last_step: int
) -> list[list[int]]:
    """Sample indices of optimizer steps ``[first_step, last_step)`` (0-based).

    Step ``s`` covers samples ``[k*B, (k+1)*B)`` of epoch ``s // spe``'s order (``k = s % spe``,
    ``B`` the effective batch; the last step of an epoch may be short). ``orders`` supplies
    known epoch orders (a resumed epoch's saved order) and caches generated ones.
    """
    spe = steps_per_epoch(n_samples, effective_batch)
    plan = []
    for step in range(first_step, last_step):
        epoch, k = divmod(step, spe)
        if epoch not in orders:
            orders[epoch] = epoch_order(n_samples, seed, epoch)
        plan.append(orders[epoch][k * effective_batch : (k + 1) * effective_batch])
    return plan


def split_micro(indices: list[int], micro_batch: int) -> list[list[int]]:
    """Cut one step's samples into micro-batches of at most ``micro_batch``."""
    return [indices[i : i + micro_batch] for i in range(0, len(indices), micro_batch)]


def data_digest(pairs: list[tuple[str, str, str]]) -> str:
    """A short hash of the training pairs (part of the resume fingerprint)."""
    import hashlib

    h = hashlib.sha256()
    for sample_id, prompt, response in pairs:
        h.update(json.dumps([sample_id, prompt, response]).encode())
    return h.hexdigest()[:16]
