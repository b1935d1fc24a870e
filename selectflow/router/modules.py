"""Finding the parts of a loaded Hugging Face model: the bottom of :mod:`selectflow.router`.

What the capture (:mod:`selectflow.router.capture`), the quality gate (:mod:`selectflow.router.gate`)
and the dump (:mod:`selectflow.router.dump`) all need, so that none of them imports another
for it:

* :data:`DEFAULT_ROUTER_PATTERN`: the schema's ``router_dump.router_pattern``, the regex on
  module names that finds the routers when the config sets none;
* :func:`named_modules_matching` → ``(name, module)`` of every module whose name matches a regex;
* :func:`supports_router_output`: whether the model returns router logits itself
  (``output_router_logits``);
* :func:`text_config`: the text part of a model config (a composite model's ``text_config``).
"""

from __future__ import annotations

import re

import torch

from selectflow.schema import schema_default

DEFAULT_ROUTER_PATTERN = schema_default("router_dump", "router_pattern")


def named_modules_matching(model: torch.nn.Module, pattern: str) -> list[tuple[str, torch.nn.Module]]:
    rx = re.compile(pattern)
    return [(name, mod) for name, mod in model.named_modules() if rx.search(name)]


def supports_router_output(model) -> bool:
    return hasattr(model.config, "output_router_logits")


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config
