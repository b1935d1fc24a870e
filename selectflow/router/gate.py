"""Select-MoE's quality gate: stage 0 (convert) and the pieces of stage 1 (warm-up).

Converting a Hugging Face MoE causal LM gives it Select-MoE's two-level routing without
touching its weights. At every MoE block — the parent of each module whose name matches
the router pattern (``router_dump.router_pattern``), so no per-family model code — a
quality gate :class:`QualityGate` (``Linear(hidden → 2, bias=False)``, initialised
N(0, ``init_std``) from a seeded generator) reads the block's input ``x``; per token
``(good, bad) = softmax(gate(x))`` and the block's output becomes

    good · moe(x) + bad · trash(x)

with the trash expert ``zero`` (``trash(x) = 0``) or ``noise`` (Gaussian noise with the
per-token RMS of ``moe(x)``, drawn in training mode only; in eval mode its expectation,
zero, so a router dump is deterministic). The gate is a submodule ``quality_gate`` of the
block and the mixing is a forward hook on the block, so every base parameter keeps its
name and value. A block that returns a tuple (transformers 4.x families return
``(hidden, router_logits)``) has its first element mixed and the rest passed on.

Files beside the model (a folder holding them is a *converted model*):

``quality_gates.safetensors``  one tensor ``<block path>.quality_gate.weight`` [2, hidden] per gate
``quality_gates.json``         ``format``, ``version``, ``trash``, ``init_std``, ``seed`` and
                               ``gates``: per gate its ``block`` path, ``name`` (weight key),
                               ``hidden_size``, ``trash``, ``init_std``

:func:`load_causal_lm` loads any model folder with ``from_pretrained`` and, when the gate
files are there, attaches the gates (no pickle, no ``trust_remote_code``). A converted
model folder made by :func:`convert_model` holds the base model's files (hard links where
the file system allows, else copies) plus the two gate files, so it is a complete model
folder on its own.

Stage 1 (the ``warmup`` rule) lives in :mod:`selectflow.train.objective`: it trains only the
gates and the routers and adds ``quality_loss_weight`` × the gate loss to the LM loss.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from selectflow.router.modules import DEFAULT_ROUTER_PATTERN, text_config
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_dir, atomic_open, atomic_path
from selectflow.schema import schema_enum

log = logging.getLogger(__name__)

GATES_WEIGHTS = "quality_gates.safetensors"
GATES_JSON = "quality_gates.json"
FORMAT = "selectflow-quality-gates"
VERSION = 1
TRASH_KINDS = schema_enum("warmup", "trash_expert")
GATE_ATTR = "quality_gate"


class QualityGate(nn.Linear):
    """``Linear(hidden → 2, bias=False)``: per-token logits of (good, bad).

    ``force_good`` (``None`` in normal use) replaces the softmax by the constant
    ``(force_good, 1 - force_good)``: a switch for tests and ablations.
    """

    def __init__(self, hidden_size: int, trash: str, *, device=None, dtype=None):
        if trash not in TRASH_KINDS:
            raise SelectFlowError(f"trash expert {trash!r} is unknown; use one of {', '.join(TRASH_KINDS)}")
        super().__init__(hidden_size, 2, bias=False, device=device, dtype=dtype)
        self.trash = trash
        self.force_good: float | None = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, trash={self.trash}"


def _mix(block: nn.Module, args: tuple, kwargs: dict, output):
    """Forward hook of a gated MoE block: ``good · moe(x) + bad · trash(x)``."""
    gate: QualityGate = getattr(block, GATE_ATTR)
    x = args[0] if args else next(iter(kwargs.values()))
    y = output[0] if isinstance(output, tuple) else output
    logits = gate(x.to(gate.weight.dtype))
    shape = (*y.shape[:-1], 1)
    if gate.force_good is not None:
        good = torch.full(shape, float(gate.force_good), dtype=y.dtype, device=y.device)
    else:
        good = torch.softmax(logits.float(), dim=-1)[..., :1].reshape(shape).to(y.dtype)
    mixed = good * y
    if gate.trash == "noise" and block.training:
        rms = y.detach().float().pow(2).mean(-1, keepdim=True).sqrt().to(y.dtype)
        mixed = mixed + (1 - good) * torch.randn_like(y) * rms
    return (mixed, *output[1:]) if isinstance(output, tuple) else mixed


def find_moe_blocks(model: nn.Module, router_pattern: str | None = None) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(block path, block, router)`` for the parent of every module matching ``router_pattern``.

    Raises :class:`SelectFlowError` when nothing matches or one block sits inside another.
    """
    rx = re.compile(router_pattern or DEFAULT_ROUTER_PATTERN)
    modules = dict(model.named_modules())
    found: dict[str, tuple[nn.Module, nn.Module]] = {}
    for name, module in modules.items():
        if rx.search(name) and "." in name and not isinstance(module, QualityGate):
            parent = name.rsplit(".", 1)[0]
            found.setdefault(parent, (modules[parent], module))
    if not found:
        raise SelectFlowError(
            f"no MoE routers found in {type(model).__name__}: no module name matches router_pattern "
            f"{rx.pattern!r}; use an MoE model or set 'router_dump.router_pattern'"
        )
    paths = sorted(found)
    for a in paths:
        for b in paths:
            if a != b and b.startswith(a + "."):
                raise SelectFlowError(
                    f"router_pattern {rx.pattern!r} matches routers in {a} and inside it in {b}; one MoE block "
                    "may not sit inside another: make 'router_dump.router_pattern' match only the routers"
                )
    return [(p, *found[p]) for p in modules if p in found]


def _hidden_size(model: nn.Module, router: nn.Module) -> int:
    weight = getattr(router, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[1])
    return int(text_config(model.config).hidden_size)


def _new_gate(block: nn.Module, hidden: int, trash: str) -> QualityGate:
    """A gate on the device of ``block`` in its float dtype (float32 beside quantised weights)."""
    ref = next(block.parameters())
    dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
    return QualityGate(hidden, trash, device=ref.device, dtype=dtype)


def _install(block: nn.Module, gate: QualityGate) -> None:
    if hasattr(block, GATE_ATTR):
        raise SelectFlowError(f"{type(block).__name__} already has a quality gate; convert a base model only once")
    block.add_module(GATE_ATTR, gate)
    block._selectflow_gate_hook = block.register_forward_hook(_mix, with_kwargs=True)


def attach_gates(
    model: nn.Module, *, trash: str, init_std: float, seed: int, router_pattern: str | None = None
) -> list[str]:
    """Stage 0 in memory: add a fresh quality gate to every MoE block; return the gate weight keys.

    The gates draw their N(0, ``init_std``) weights from a generator seeded with ``seed``,
    in block order, so the result does not depend on the global RNG.
    """
    if init_std < 0:
        raise SelectFlowError(f"gate_init_std must be >= 0, got {init_std!r}")
    generator = torch.Generator().manual_seed(int(seed))
    names = []
    for path, block, router in find_moe_blocks(model, router_pattern):
        hidden = _hidden_size(model, router)
        weight = torch.randn(2, hidden, generator=generator) * float(init_std)
        gate = _new_gate(block, hidden, trash)
        with torch.no_grad():
            gate.weight.copy_(weight)
        _install(block, gate)
        gate._selectflow_init_std = float(init_std)
        names.append(f"{path}.{GATE_ATTR}.weight")
    log.info("attached %d quality gates (trash %s, init std %g, seed %d)", len(names), trash, init_std, seed)
    return names


def quality_gates(model: nn.Module) -> list[tuple[str, QualityGate]]:
    """The model's quality gates, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QualityGate)]


def is_converted(path: str | os.PathLike) -> bool:
    """Whether the model folder ``path`` carries quality-gate files."""
    return (Path(path) / GATES_JSON).is_file()


def gate_manifest(model: nn.Module, **extra) -> dict:
    gates = quality_gates(model)
    if not gates:
        raise SelectFlowError(f"{type(model).__name__} has no quality gates to save; convert it first")
    return {
        "format": FORMAT,
        "version": VERSION,
        **extra,
        "gates": [
            {
                "block": name.rsplit(".", 1)[0],
                "name": f"{name}.weight",
                "hidden_size": g.in_features,
                "trash": g.trash,
                "init_std": getattr(g, "_selectflow_init_std", None),
            }
            for name, g in gates
        ],
    }


def save_gates(model: nn.Module, folder: str | os.PathLike, **extra) -> None:
    """Write the gate files into ``folder`` (each atomically); ``extra`` goes into the JSON."""
    from safetensors.torch import save_file

    folder = Path(folder)
    manifest = gate_manifest(model, **extra)
    tensors = {
        f"{name}.weight": g.weight.detach().to("cpu", torch.float32).contiguous() for name, g in quality_gates(model)
    }
    with atomic_path(folder / GATES_WEIGHTS, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    with atomic_open(folder / GATES_JSON, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / GATES_JSON
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SelectFlowError(f"{path}: cannot read the quality-gate manifest ({exc}); rerun rule convert") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION or "gates" not in manifest:
        raise SelectFlowError(f"{path}: not a {FORMAT} v{VERSION} manifest; rerun rule convert")
    return manifest


def load_gates(model: nn.Module, folder: str | os.PathLike) -> list[str]:
    """Attach the gates saved in ``folder`` to ``model`` (a freshly loaded base model)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        weights = load_file(str(folder / GATES_WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types
        raise SelectFlowError(
            f"{folder / GATES_WEIGHTS}: cannot read the gate weights ({exc}); rerun rule convert"
        ) from None
    modules = dict(model.named_modules())
    for entry in manifest["gates"]:
        block, key = modules.get(entry["block"]), entry["name"]
        if block is None:
            raise SelectFlowError(
                f"{folder / GATES_JSON}: gate block {entry['block']!r} is not a module of {type(model).__name__}; "
                "the gates belong to another model: rerun rule convert on this one"
            )
        if key not in weights or tuple(weights[key].shape) != (2, entry["hidden_size"]):
            raise SelectFlowError(
                f"{folder / GATES_WEIGHTS}: no [2, {entry['hidden_size']}] tensor {key!r}; rerun rule convert"
            )
        gate = _new_gate(block, entry["hidden_size"], entry["trash"])
        with torch.no_grad():
            gate.weight.copy_(weights[key])
        gate._selectflow_init_std = entry.get("init_std")
        _install(block, gate)
    return [e["name"] for e in manifest["gates"]]


def load_causal_lm(path: str | os.PathLike, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)`` plus the gates when ``path`` has them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if is_converted(path):
        names = load_gates(model, path)
        log.info("loaded %d quality gates from %s", len(names), Path(path) / GATES_JSON)
    return model


def base_state_dict(model: nn.Module) -> dict:
    """The model's state dict without the gate weights (what the base model folder holds)."""
    gate_keys = {f"{name}.weight" for name, _ in quality_gates(model)}
    return {k: v for k, v in model.state_dict().items() if k not in gate_keys}


def save_converted(model: nn.Module, folder: str | os.PathLike, tokenizer=None, **extra) -> None:
    """``save_pretrained`` of the base weights (gates excluded) plus the gate files, into ``folder``."""
    model.save_pretrained(folder, state_dict=base_state_dict(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    save_gates(model, folder, **extra)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def convert_model(
    base_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    trash: str,
    init_std: float,
    seed: int,
    router_pattern: str | None = None,
) -> Path:
    """Stage 0: write ``out_dir`` = the base model's files + fresh quality gates; return ``out_dir``.

    The base weights are not loaded into a new file: every file of ``base_path`` is hard
    linked (copied where links are impossible), so the conversion costs one model load
    (to find the MoE blocks) and no extra disk on one file system. A ``base_path`` that
    already has gates (e.g. an earlier warm-up checkpoint) is passed through with its
    gates, which are checked to load; ``trash``, ``init_std`` and ``seed`` then do nothing.
    """
    base = Path(base_path)
    if not base.is_dir():
        raise SelectFlowError(
            f"model path {base} is not a folder; set 'model.path' to a local Hugging Face model folder"
        )
    converted = is_converted(base)
    model = load_causal_lm(base, dtype=torch.float32)
    if converted:
        names = [f"{name}.weight" for name, _ in quality_gates(model)]
        log.warning(
            "%s already has %d quality gates (%s): keeping them; the trash, init std and seed settings do not apply",
            base,
            len(names),
            GATES_JSON,
        )
    else:
        names = attach_gates(model, trash=trash, init_std=init_std, seed=seed, router_pattern=router_pattern)
    with atomic_dir(out_dir) as tmp:
        for src in base.iterdir():
            if src.is_file() and not src.name.startswith("."):
                _link_or_copy(src, tmp / src.name)
        if not converted:
            save_gates(model, tmp, trash=trash, init_std=float(init_std), seed=int(seed), base_model=str(base))
    log.info(
        "converted %s -> %s: %d quality gates (%s)",
        base,
        out_dir,
        len(names),
        ", ".join(names[:3]) + (", ..." if len(names) > 3 else ""),
    )
    return Path(out_dir)
