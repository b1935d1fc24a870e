"""What ``selectflow check --configfile …`` reports: every dataset of a config, looked at without running a model.

Per dataset: the file, its detected format, how many records it holds, where the
``sample_id`` s come from (the records' ``id`` field, or ``dataset:line``) and the first
problem the workflow would stop at (a malformed line, a record without a response, an
empty file), with its line number. Across datasets: a ``sample_id`` used twice. The
records are read with :mod:`selectflow.data.records`, the readers the workflow uses, so a
dataset that passes here passes ``split_dataset``.

Only the config, the schema and the JSONL files are read: it takes seconds, and runs
before anything else is built.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from selectflow.runtime.errors import SelectFlowError

DEMO_PREFIX = "resources/demo/"


@dataclass
class DatasetCheck:
    name: str
    path: str
    format: str | None = None
    records: int | None = None
    id_source: str | None = None
    problem: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _first_format(path: Path) -> str | None:
    """The format of the first record, read as the workflow reads it (None when unreadable)."""
    from selectflow.data.records import detect_format, iter_jsonl

    try:
        for _, record in iter_jsonl(path):
            return detect_format(record)
    except (SelectFlowError, ValueError):
        return None
    return None


def _count_lines(path: Path) -> int | None:
    """Non-blank lines, bytes as they are (None when the file cannot be opened as lines)."""
    from selectflow.data.records import open_lines

    try:
        with open_lines(path) as fh:
            return sum(1 for line in fh if line.strip())
    except (SelectFlowError, OSError):
        return None


def check_dataset(name: str, path: str | os.PathLike) -> tuple[DatasetCheck, list[str]]:
    """Check one dataset; return its :class:`DatasetCheck` and its sample ids (empty on a problem)."""
    from selectflow.data.records import read_dataset

    result = DatasetCheck(name=name, path=str(path))
    p = Path(path)
    if not p.is_file():
        if str(path).startswith(DEMO_PREFIX):
            result.note = "built by rule demo_pool (make demo / snakemake), not checked"
            return result, []
        result.problem = (
            f"dataset '{name}': file {path} does not exist (relative to {os.getcwd()}); "
            f"fix 'datasets.{name}' in the config"
        )
        return result, []
    result.format = _first_format(p)
    try:
        records = read_dataset(p, name)
    except SelectFlowError as exc:
        result.problem = str(exc)
        result.records = _count_lines(p)
        return result, []
    result.records = len(records)
    ids = [r["sample_id"] for r in records]
    if records and all(sid != f"{name}:{r['line']}" for sid, r in zip(ids, records)):
        result.id_source = "'id' field"
    else:
        result.id_source = f"{name}:<line>"
        if any("id" in r["record"] for r in records):
            result.note = "some records have an 'id', but not all or not unique: ids fall back to dataset:line"
    return result, ids


def check_config(config: dict) -> list[DatasetCheck]:
    """Check every dataset of ``config``; a sample id shared by two datasets is a problem of the second."""
    results = []
    owner: dict[str, str] = {}
    for name, path in config.get("datasets", {}).items():
        result, ids = check_dataset(name, path)
        for sid in ids:
            other = owner.setdefault(sid, name)
            if other != name:
                result.problem = (
                    f"sample_id {sid!r} is used by dataset '{other}' and dataset '{name}'; make ids "
                    "unique across datasets, or drop the 'id' field (ids become dataset:line)"
                )
                break
        results.append(result)
    return results


def render(results: list[DatasetCheck]) -> str:
    """The per-dataset table and the problems, as text."""
    head = ("dataset", "format", "records", "sample ids", "status")
    rows = [
        (
            r.name,
            r.format or "?",
            "?" if r.records is None else f"{r.records:,}",
            r.id_source or "?",
            "ok" if r.ok and not r.note else ("note" if r.ok else "PROBLEM"),
        )
        for r in results
    ]
    width = (
        [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)] if rows else [len(h) for h in head]
    )
    fmt = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, width)).rstrip()  # noqa: E731
    lines = [fmt(head), *(fmt(row) for row in rows)]
    for r in results:
        if r.problem:
            lines.append(f"PROBLEM {r.name} ({r.path}): {r.problem}")
        if r.note:
            lines.append(f"note    {r.name} ({r.path}): {r.note}")
    return "\n".join(lines) + "\n"


def model_type_problems(config: dict) -> list[str]:
    """The causal-LM model folders (``model.path``, ``train.model_path``) whose model type cannot be loaded as one.

    Only folders with a config.json are read: ``check`` runs no model and leaves missing folders to the workflow.
    """
    from selectflow.data.preflight import CAUSAL_LM_KEYS, check_causal_lm, model_keys

    problems = []
    for key, path in model_keys(config):
        if key in CAUSAL_LM_KEYS and (Path(path) / "config.json").is_file():
            try:
                check_causal_lm(key, path)
            except SelectFlowError as exc:
                problems.append(str(exc))
    return problems


def data_check_text(config: dict) -> str:
    """For ``snakemake -n``: print the dataset table; return the problems as text ("" when none)."""
    results = check_config(config)
    sys.stdout.write("data check (selectflow check):\n" + render(results))
    bad = [r for r in results if not r.ok]
    if not bad:
        return ""
    return (
        f"data check: {len(bad)} of {len(results)} datasets cannot be read (PROBLEM above: "
        f"{', '.join(r.name for r in bad)}); fix them and run again"
    )


def is_dry_run(argv: list[str]) -> bool:
    """Whether a Snakemake command line asks for a dry run (``-n``, ``-np``, ``--dry-run``, ``--dryrun``).

    The Snakefile needs this while it is parsed, before Snakemake picks its executor.
    """
    for arg in argv[1:]:
        if arg in ("--dry-run", "--dryrun", "--just-print"):
            return True
        if (
            len(arg) > 1
            and arg[0] == "-"
            and arg[1] != "-"
            and arg[1:].isalpha()
            and "n" in arg[1:]
            and set(arg[1:]) <= set("nprqkFfRUTtSDh")
        ):
            return True
    return False
