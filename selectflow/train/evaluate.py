"""Evaluate a fine-tuned model on a test set: response-token loss and greedy answers, per record.

* :func:`response_losses` → per record ``(summed response-token NLL, response tokens)``, the
  same loss the trainer minimises (prompt tokens unlabelled, eos closes the response).
* :func:`greedy_answers` → per record the model's greedy continuation of the prompt, up to
  eos or ``max_new_tokens``, decoded to text.
"""

from __future__ import annotations

import torch

from selectflow.train.data import IGNORE_INDEX, encode_pair, pad_collate


@torch.no_grad()
def response_losses(
    model, tokenizer, pad_id: int, pairs: list[tuple[str, str]], max_length: int, batch_size: int = 32
) -> list[tuple[float, int]]:
    """``(summed NLL, token count)`` of each ``(prompt, response)``'s response tokens under ``model``."""
    out: list[tuple[float, int]] = []
    for s in range(0, len(pairs), batch_size):
        batch = pad_collate([encode_pair(tokenizer, p, r, max_length) for p, r in pairs[s : s + batch_size]], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        target = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none"
        )
        counts = (target != IGNORE_INDEX).sum(dim=1)
        out.extend(zip(nll.sum(dim=1).tolist(), counts.tolist()))
    return out


@torch.no_grad()
def greedy_answers(
    model, tokenizer, pad_id: int, prompts: list[str], max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """The greedy continuation of each prompt (left-padded batches), decoded without specials."""
    answers: list[str] = []
    eos = tokenizer.eos_token_id
    for s in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts[s : s + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos,
        )
        answers.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in generated)
    return answers
