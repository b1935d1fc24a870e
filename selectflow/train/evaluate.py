"""Evaluate a fine-tuned model on a test set: response-token loss and greedy answers, per record.

* :func:`response_losses` → per record ``(summed response-token NLL, response tokens)``, the
  same loss the trainer minimises (prompt tokens unlabelled, eos closes the response).
* :func:`greedy_answers` → per record the model's greedy continuation of the prompt, up to
  eos or ``max_new_tokens``, decoded to text.
* :func:`evaluate` → per kind of a test JSONL: ``n``, response-token ``loss``, ``tokens`` and greedy-answer
  ``accuracy`` of a saved model.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from selectflow.data.records import iter_jsonl, record_prompt_response
from selectflow.runtime.errors import SelectFlowError
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


def _test_rows(test_jsonl) -> list[tuple[str, str, str]]:
    """``(kind, prompt, response)`` of each test record; kind ``all`` for records without one."""
    rows = []
    for _, rec in iter_jsonl(test_jsonl):
        prompt, response = record_prompt_response(rec)
        rows.append((str(rec.get("kind", "all")), prompt, response))
    if not rows:
        raise SelectFlowError(f"test set {test_jsonl} holds no records; set compare.eval to a non-empty JSONL")
    return rows


def evaluate(model_dir, test_jsonl, max_length: int) -> pd.DataFrame:
    """Per kind: ``n``, response-token ``loss`` (summed NLL / tokens), ``tokens`` and ``accuracy`` of the
    greedy answers (NaN for kinds without a checker: :data:`selectflow.data.demotest.CHECKERS`)."""
    from transformers import AutoModelForCausalLM

    from selectflow.data.demotest import CHECKERS
    from selectflow.train.trainer import _tokenizer

    rows = _test_rows(test_jsonl)
    tokenizer, pad_id = _tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    losses = response_losses(model, tokenizer, pad_id, [(p, r) for _, p, r in rows], max_length)
    checked = [i for i, (kind, _, _) in enumerate(rows) if kind in CHECKERS]
    longest = max((len(tokenizer(rows[i][2], add_special_tokens=False)["input_ids"]) for i in checked), default=0)
    answers = dict(zip(checked, greedy_answers(model, tokenizer, pad_id, [rows[i][1] for i in checked], longest + 8)))
    frame = pd.DataFrame(
        {
            "kind": [r[0] for r in rows],
            "nll": [v for v, _ in losses],
            "tokens": [n for _, n in losses],
            "correct": [
                float(CHECKERS[r[0]](r[1], answers[i])) if i in answers else math.nan for i, r in enumerate(rows)
            ],
        }
    )
    table = frame.groupby("kind", sort=True).agg(
        n=("nll", "size"), nll=("nll", "sum"), tokens=("tokens", "sum"), accuracy=("correct", "mean")
    )
    table["loss"] = table["nll"] / table["tokens"].clip(lower=1)
    return table.reset_index()[["kind", "n", "loss", "tokens", "accuracy"]]
