"""Text embeddings from a Hugging Face model: mean of the last hidden state over real tokens.

* :func:`load_encoder` → ``(model, tokenizer)`` from a local model folder (no download).
* :func:`encode_texts` → ``float32 [n, H]`` (``H`` = hidden size), one row per text, in
  input order. Works with a base model, a causal LM or a PEFT-wrapped causal LM (the
  model being trained), so neighbours can be embedded with the current weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from selectflow.data.tokens import pad_token_id
from selectflow.runtime.device import inference_dtype, resolve_device
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.oom import run_adaptive

log = logging.getLogger(__name__)


def load_encoder(path: str | os.PathLike, device: str | torch.device, dtype: str = "auto"):
    """Load the backbone of the model in ``path`` (lm head dropped) and its tokenizer, in eval mode."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise SelectFlowError(f"model folder {path} has no config.json; point 'model' at a save_pretrained folder")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    kwargs = {"dtype": inference_dtype(device, dtype), "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    try:
        # the backbone of a causal LM checkpoint leaves its lm_head unused: transformers would log a
        # coloured "LOAD REPORT" table for that; it is checked here instead, and only real gaps reported
        with _quiet_load_report():
            model, info = AutoModel.from_pretrained(path, output_loading_info=True, **kwargs)
        unexpected = [k for k in info.get("unexpected_keys", ()) if not k.split(".")[0] == "lm_head"]
        if info.get("missing_keys") or unexpected:
            log.warning(
                "encoder %s: %d weights missing from the checkpoint (newly initialised: %s), %d unused (%s)",
                path,
                len(info.get("missing_keys", ())),
                ", ".join(sorted(info.get("missing_keys", ()))[:5]),
                len(unexpected),
                ", ".join(sorted(unexpected)[:5]),
            )
    except ValueError:
        # Architectures registered only as causal LMs; encode_texts reaches their backbone.
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval(), tokenizer


def _no_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _quiet_load_report():
    """Drop transformers' load-report warning for the duration of one load.

    A filter, not a level: transformers runs extra checks (and logs about tensor
    parallelism) when its logger's level is raised.
    """
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(_no_load_report)
    try:
        yield
    finally:
        logger.removeFilter(_no_load_report)


def _backbone(model):
    """The module whose output has ``last_hidden_state``: unwrap PEFT, then the task head."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, "base_model", model)


def encode_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Embed ``texts`` as ``float32 [n, H]``: the last hidden state averaged over non-pad tokens.

    Texts are batched longest first (so an OOM shows up on the first batch, and batches
    hold texts of similar length); a batch that runs out of memory is halved and the
    finished ones are kept. Padding goes on the right, where a causal model's real tokens
    never attend to it, so a text's vector does not depend on its batch mates. The model
    is switched to eval mode for the call (no dropout) and restored afterwards.
    """
    backbone = _backbone(model)
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    n = len(texts)
    hidden = model.config.hidden_size
    out = np.empty((n, hidden), dtype=np.float32)
    if n == 0:
        return out
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(row) for row in ids])
    if (lengths == 0).any():
        bad = int(np.argmax(lengths == 0))
        raise SelectFlowError(f"text {bad} ({texts[bad]!r}) has no tokens; drop empty texts before embedding")
    order = np.argsort(-lengths, kind="stable")
    pad_id = pad_token_id(tokenizer)

    def run(lo: int, hi: int) -> None:
        rows = order[lo:hi]
        width = int(lengths[rows].max())
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            input_ids[r, : lengths[i]] = torch.as_tensor(ids[i])
            mask[r, : lengths[i]] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        state = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (state * weights).sum(dim=1) / weights.sum(dim=1)
        out[rows] = pooled.cpu().numpy()

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            run_adaptive(run, 0, n, batch_size, what="embedding batch")
    finally:
        model.train(was_training)
    return out
