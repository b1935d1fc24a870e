"""Checks of the config and the machine made while Snakemake reads the workflow.

Everything here is cheap (no model is loaded, no dataset is read beyond a few lines) and
runs before the first job, so a wrong path or a full disk stops the run at once with the
key or path at fault and what to do, instead of failing after hours of inference.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from selectflow.config import PROXY
from selectflow.data.records import open_lines
from selectflow.layout import RESULTS_ROOT
from selectflow.runtime.errors import SelectFlowError

DEMO_PREFIX = "resources/demo/"
MIN_FREE_MB = 100
# commands that free space or repair state: a full or read-only disk must not block them
HOUSEKEEPING = (
    "--unlock",
    "--delete-all-output",
    "--delete-temp-output",
    "--cleanup-metadata",
    "--cm",
    "--cleanup-shadow",
    "--touch",
    "-t",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def check_datasets_given(config: Mapping, configfiles: list[str]) -> None:
    """``datasets`` must name at least one file (the schema would say only ``{} should be non-empty``)."""
    if isinstance(config.get("datasets"), dict) and not config["datasets"]:
        where = ", ".join(str(f) for f in configfiles) or "the config"
        raise SelectFlowError(
            f"'datasets' in {where} is empty; name at least one JSONL file (datasets: {{name: path/to/file.jsonl}})"
        )


def check_datasets_exist(datasets: Mapping[str, str]) -> None:
    for name, path in datasets.items():
        # the demo pool is built by rule demo_pool; any other dataset must exist up front
        if not os.path.exists(path) and not path.startswith(DEMO_PREFIX):
            raise SelectFlowError(
                f"dataset '{name}': file {path} does not exist (relative to {os.getcwd()}); "
                f"fix 'datasets.{name}' in the config"
            )


def check_targets_exist(config: Mapping) -> None:
    """``selection.target`` and ``compare.target``, when set, are files (no rule builds them)."""
    for key in ("selection", "compare"):
        path = config.get(key, {}).get("target")
        if path and not os.path.isfile(path):
            raise SelectFlowError(
                f"{key}.target: file {path} does not exist (relative to {os.getcwd()}); "
                f"point {key}.target at a JSONL of target records, or set it to null"
            )


def model_keys(config: Mapping) -> list[tuple[str, str]]:
    """(config key, folder) of every model the run loads that no rule builds (``model.path: proxy``
    is built by rule proxy_model)."""
    keys = [("model.path", config["model"]["path"])] if config["model"]["path"] != PROXY else []
    if config["train"]["enabled"] and config["train"].get("model_path"):
        keys.append(("train.model_path", config["train"]["model_path"]))
    if config["index"]["enabled"] and config["index"].get("encoder"):
        keys.append(("index.encoder", config["index"]["encoder"]))
    if config["decontaminate"].get("eval_set") and config["decontaminate"].get("encoder"):
        keys.append(("decontaminate.encoder", config["decontaminate"]["encoder"]))
    return [(k, p) for k, p in keys if not p.startswith(DEMO_PREFIX) and not p.startswith(f"{RESULTS_ROOT}/")]


def check_model_folder(key: str, path: str) -> None:
    """``path`` is a local Hugging Face model folder with a config and weights."""
    folder = Path(path)
    what = f"'{key}' {path}"
    if not folder.exists():
        raise SelectFlowError(
            f"{what} does not exist (relative to {os.getcwd()}); set '{key}' to a local "
            "Hugging Face model folder (nothing is downloaded)"
        )
    if not folder.is_dir():
        raise SelectFlowError(
            f"{what} is a file, not a folder; set '{key}' to the folder that holds config.json and the weights"
        )
    if not (folder / "config.json").is_file():
        raise SelectFlowError(f"{what} has no config.json; set '{key}' to a folder saved with save_pretrained")
    if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        raise SelectFlowError(
            f"{what} holds no model weights (*.safetensors or pytorch_model*.bin); copy the "
            f"weights into it, or set '{key}' to a complete model folder"
        )


#: keys whose model is loaded with AutoModelForCausalLM (the encoders are not)
CAUSAL_LM_KEYS = ("model.path", "train.model_path")


def causal_lm_problem(model_type: str) -> str | None:
    """Why the installed transformers cannot load ``model_type`` as a causal LM; None when it can."""
    import transformers
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return None
    where = f"transformers {transformers.__version__}"
    if model_type not in CONFIG_MAPPING_NAMES:
        return (
            f"{where} does not know model_type {model_type!r} (a newer transformers may; SelectFlow does not "
            "run remote code)"
        )
    tasks = []
    for name in sorted(dir(modeling_auto)):
        mapping = getattr(modeling_auto, name)
        if name.startswith("MODEL_FOR_") and name.endswith("_MAPPING_NAMES") and model_type in mapping:
            cls = mapping[model_type]
            task = name.removeprefix("MODEL_FOR_").removesuffix("_MAPPING_NAMES").lower().replace("_", "-")
            tasks.append(f"{task} ({cls if isinstance(cls, str) else cls[0]})")
    if tasks:
        return f"{where} loads model_type {model_type!r} as {', '.join(tasks[:3])}, not as a causal LM"
    if model_type in modeling_auto.MODEL_MAPPING_NAMES:
        return f"{where} has only a base model for model_type {model_type!r}, no causal-LM head"
    return f"{where} has no model class for model_type {model_type!r} (a part of a larger model's config)"


def check_causal_lm(key: str, path: str) -> None:
    """The model type named by the folder's ``config.json`` (if any) is one AutoModelForCausalLM loads."""
    import json

    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise SelectFlowError(
            f"'{key}' {path}: cannot read config.json ({exc}); save the model with save_pretrained"
        ) from None
    problem = causal_lm_problem(model_type) if model_type else None  # untyped: the loader says what is wrong
    if problem:
        raise SelectFlowError(
            f"'{key}' {path}: {problem}. SelectFlow dumps the routers of Hugging Face MoE causal LMs (the types "
            "AutoModelForCausalLM loads; the MoE ones checked are listed in docs/families.md); set "
            f"'{key}' to such a model, e.g. its text-only causal-LM checkpoint"
        )


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_results_writable(results: str, min_free_mb: int = MIN_FREE_MB) -> None:
    """The folder ``results`` (or its nearest existing parent) accepts a file and has ``min_free_mb`` free."""
    folder = _nearest_existing(Path(results))
    try:
        fd, probe = tempfile.mkstemp(prefix=".selectflow-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SelectFlowError(
            f"cannot write results to {folder} ({exc.strerror}); outputs go to {results}/ "
            "under the folder you run snakemake in: run from a writable folder, or make "
            f"{folder} writable"
        ) from None
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise SelectFlowError(
            f"the disk of {folder} is full ({free_mb:.1f} MiB free, at least {min_free_mb} MiB "
            f"needed); free space there, or run from a folder on another disk"
        )


def count_records_up_to(paths: list[str], limit: int) -> int:
    """Non-blank lines of ``paths`` together, counting no further than ``limit``."""
    n = 0
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open_lines(Path(path)) as fh:
            for raw in fh:
                n += bool(raw.strip())
                if n >= limit:
                    return n
    return n


def tiny_selection_warning(datasets: Mapping[str, str], selection_percentage: float) -> str | None:
    """A warning when ``selection_percentage`` of the pool rounds to at most one record, else None.

    Reads only as many lines as it takes to know: round(p · n) <= 1 needs n <= 1.5 / p.
    """
    limit = math.floor(1.5 / selection_percentage) + 1
    paths = [p for p in datasets.values() if os.path.isfile(p)]
    if len(paths) < len(datasets):
        return None  # a dataset built by a rule (the demo pool): its size is not known yet
    try:
        n = count_records_up_to(paths, limit)
    except SelectFlowError:
        return None  # an unreadable file: its split_dataset job says what is wrong, with the line
    if n >= limit or n == 0:
        return None
    return tiny_selection_text(selection_percentage, n, "records in 'datasets'")


def tiny_selection_text(selection_percentage: float, n: int, what: str) -> str | None:
    """The tiny-selection warning when ``selection_percentage`` of ``n`` ``what`` selects at most one, else None."""
    k = max(1, round(selection_percentage * n))
    if k > 1:
        return None
    return (
        f"selection.selection_percentage {selection_percentage} of the {n} {what} selects "
        f"{k} record; raise selection_percentage or add records"
    )


def preflight(config: Mapping, results: str, argv: list[str] = ()) -> list[str]:
    """Every check of this module on a validated config; returns the warnings to show.

    ``argv`` (Snakemake's command line): the disk checks are skipped for housekeeping
    commands such as ``--unlock`` or ``--delete-all-output``.
    """
    check_datasets_exist(config["datasets"])
    check_targets_exist(config)
    for key, path in model_keys(config):
        check_model_folder(key, path)
        if key in CAUSAL_LM_KEYS:
            check_causal_lm(key, path)
    if not any(arg.split("=")[0] in HOUSEKEEPING for arg in argv):
        check_results_writable(results)
    warning = tiny_selection_warning(config["datasets"], config["selection"]["selection_percentage"])
    return [warning] if warning else []
