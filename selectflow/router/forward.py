"""One forward pass of a loaded causal LM, as the router dump runs it: the model, the outputs its
modules give, and the per-sample values made from its per-token outputs (torch, any device).

* :func:`load_model`: a local Hugging Face causal LM and its tokenizer, on a device, in eval mode;
* :func:`capture_outputs`: forward hooks that record what some modules return, per forward call;
* :func:`masked_token_mean`: per-layer [B·T, K] → [B, L, K], the mean over each row's valid tokens;
* :func:`last_hidden`: the ``last_hidden_state`` [B, T, H] of a decoder's output;
* :func:`response_nll` / :func:`eos_nll`: [B] mean NLL of each row's response tokens, and NLL of
  its end-of-sequence token.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from selectflow.router.gate import load_causal_lm
from selectflow.runtime.errors import SelectFlowError


def load_model(path: str, device: torch.device, dtype: torch.dtype):
    """Load a local Hugging Face causal LM and its tokenizer (``from_pretrained``, no download)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise SelectFlowError(
            f"model path {path} is not a folder; set 'model.path' to a local Hugging Face model folder"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_causal_lm(path, dtype=dtype)
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@contextmanager
def capture_outputs(modules: list[tuple[str, torch.nn.Module]], whole: bool = False):
    """Record each module's first output tensor (``whole``: its whole output) per forward call."""
    captured: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = []
    for slot, (_, module) in zip(captured, modules):

        def hook(_mod, _inp, out, slot=slot):
            slot.append(out[0] if isinstance(out, (tuple, list)) and not whole else out)

        handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def masked_token_mean(per_layer: list[torch.Tensor], mask: torch.Tensor, softmax: bool) -> torch.Tensor:
    """[B·T, K] (or [B, T, K]) per layer → [B, L, K] mean over the mask's valid tokens."""
    b, t = mask.shape
    m = mask.to(torch.float32).unsqueeze(-1)
    out = []
    for x in per_layer:
        x = x.reshape(b, t, -1).float()
        if softmax:
            x = torch.softmax(x, dim=-1)
        out.append(torch.where(m > 0, x, 0.0).sum(1) / m.sum(1).clamp_min(1))  # padding may hold NaN
    return torch.stack(out, dim=1)


def last_hidden(output) -> torch.Tensor | None:
    """The ``last_hidden_state`` [B, T, H] of a decoder's output (a ModelOutput or a tuple), or None."""
    value = getattr(output, "last_hidden_state", None)
    if value is None and isinstance(output, (tuple, list)) and output:
        value = output[0]
    return value if torch.is_tensor(value) else None


def response_nll(
    logits: torch.Tensor, ids: torch.Tensor, starts: list[int], lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL of tokens [start, length) of each row (token i predicted from position i-1).

    Only the scored positions go through the softmax. Rows with no scored token get NaN.
    """
    b, t = ids.shape
    pos = torch.arange(1, t, device=ids.device)
    lo = torch.tensor(starts, device=ids.device).clamp_min(1).unsqueeze(1)  # the first token has no context
    hi = torch.tensor(lengths, device=ids.device).unsqueeze(1)
    scored = (pos >= lo) & (pos < hi)  # [B, T-1]: target position pos, predicted at pos-1
    rows, cols = scored.nonzero(as_tuple=True)
    tok_nll = torch.nn.functional.cross_entropy(logits[rows, cols].float(), ids[rows, cols + 1], reduction="none")
    count = scored.sum(1)
    total = torch.zeros(b, device=ids.device).index_add_(0, rows, tok_nll)
    nll = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return nll, count


def eos_nll(logits: torch.Tensor, ids: torch.Tensor, lengths: list[int], eos_id: int | None) -> torch.Tensor:
    """NLL of each row's last token when it is ``eos_id`` (predicted from the token before); else NaN."""
    rows = torch.arange(ids.shape[0], device=ids.device)
    last = torch.tensor(lengths, device=ids.device) - 1
    pred = logits[rows, (last - 1).clamp_min(0)].float()
    nll = torch.nn.functional.cross_entropy(pred, ids[rows, last], reduction="none")
    ok = (ids[rows, last] == (-1 if eos_id is None else eos_id)) & (last >= 1)
    return torch.where(ok, nll, torch.full_like(nll, float("nan")))
