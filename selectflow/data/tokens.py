"""The one padding rule of the router dump, the trainer and the encoder.

Padded positions are always masked out (attention mask, ignored labels), so any id in the
vocabulary pads correctly; the rule only has to give one. A tokenizer's pad token when it
has one, else its eos token, else id 0, logged once per tokenizer.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def pad_token_id(tokenizer) -> int:
    """The id that pads batches for ``tokenizer``: pad, else eos, else 0 (with a warning)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    if not getattr(tokenizer, "_selectflow_pad_warned", False):
        log.warning("tokenizer %s has neither a pad nor an eos token; padding with id 0 (padded positions are "
                    "masked out); set pad_token in its tokenizer_config.json to choose another",
                    getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        try:
            tokenizer._selectflow_pad_warned = True
        except AttributeError:
            pass
    return 0
