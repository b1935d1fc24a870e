"""A real-text instruction pool built from the documentation strings that ship with Python.

:func:`make_realtext_pool` → records over the public functions and classes of a fixed list
of standard-library modules (sorted; private names skipped), one task kind each:

* ``explain``: "What does `json.dumps` do?" → the first paragraph of its docstring;
* ``signature``: "Give the call signature of `json.dumps`." → ``json.dumps(obj, *, skipkeys=False, ...)``;
* ``explain_class``: "What is the class `fractions.Fraction` for?" → its docstring's first paragraph;
* ``methods``: "Which public methods does `queue.Queue` define?" → their names;
* ``summarise_module``: "Summarise the `textwrap` module." → the module docstring's first paragraph;
* ``list_functions``: "List the public functions of the `bisect` module." → their names.

The candidates are sampled by seed; near-duplicates of clean records are planted (a few
words swapped or reordered: ``planted: near_duplicate``, ``duplicate_of``), then the junk
suite (:mod:`selectflow.data.junk`). :func:`write_realtext_pool` writes the records in turn
as Alpaca, ShareGPT and OpenAI-messages JSONL (three files, unique ``id`` across them).
:func:`make_realtext_testset` draws a clean test set for a pool from the candidates it does not ask.
Labels: ``kind`` (the task kind), ``planted`` — to measure by, never read by the selection.
Deterministic for a seed on one Python version (docstrings change between versions), whatever
the calling process has imported: the modules are read in a fresh interpreter
(:func:`candidate_records`), because libraries patch standard modules when they are imported
(transformers adds methods to ``logging.Logger``, another library replaces ``inspect.getfile``),
and in the calling process those patches would change the records.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from selectflow.data.junk import plant_junk
from selectflow.data.records import write_jsonl

MODULES = (
    "abc",
    "argparse",
    "ast",
    "base64",
    "binascii",
    "bisect",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "colorsys",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.utils",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "locale",
    "logging",
    "math",
    "mimetypes",
    "numbers",
    "operator",
    "pathlib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "shlex",
    "shutil",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "typing",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "wave",
    "weakref",
    "zipfile",
    "zlib",
    "array",
    "builtins",
    "filecmp",
    "fileinput",
    "graphlib",
    "io",
    "os",
    "platform",
    "posixpath",
    "quopri",
    "reprlib",
    "stat",
    "sys",
    "time",
    "traceback",
    "warnings",
    "xml.etree.ElementTree",
    "asyncio",
    "urllib.request",
    "smtplib",
    "socket",
    "selectors",
    "signal",
    "plistlib",
    "concurrent.futures",
    "multiprocessing",
    "subprocess",
    "optparse",
    "netrc",
    "ftplib",
)
FORMATS = ("alpaca", "sharegpt", "messages")
_SWAPS = {
    "the": "a",
    "a": "the",
    "return": "give back",
    "returns": "gives back",
    "object": "value",
    "function": "routine",
    "string": "text",
    "list": "sequence",
    "new": "fresh",
    "if": "when",
}
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _first_paragraph(doc: str | None) -> str | None:
    if not doc:
        return None
    para = inspect.cleandoc(doc).split("\n\n")[0].strip()
    para = " ".join(para.split())
    return para if len(para.split()) >= 4 and not _ADDRESS.search(para) else None


def _public(module) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    out = []
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if name.startswith("_") or obj is None or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", module.__name__) not in (module.__name__, "_" + module.__name__.split(".")[-1]):
            continue
        out.append((name, obj))
    return out


def _signature(qual: str, obj) -> str | None:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None
    return None if _ADDRESS.search(sig) or len(sig) > 300 else f"{qual}{sig}"


@functools.cache
def candidate_records() -> list[dict]:
    """Every (instruction, output, kind) the module list yields, in a fixed order: :func:`records_here`
    run in a fresh ``python -I`` that imports this module alone (the standard library and this
    package), so the records do not depend on what the caller has imported. The same list for
    every caller: treat it as read-only."""
    root = str(Path(__file__).resolve().parents[2])
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from selectflow.data.realtext import records_here; json.dump(records_here(), sys.stdout)"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code, root], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"reading the standard library's docstrings failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def records_here() -> list[dict]:
    """:func:`candidate_records` read in this process: the result depends on what it has imported."""
    out = []
    for mod_name in MODULES:
        module = importlib.import_module(mod_name)
        members = _public(module)
        summary = _first_paragraph(module.__doc__)
        if summary:
            out.append((f"Summarise the `{mod_name}` module.", summary, "summarise_module"))
        funcs = [n for n, o in members if inspect.isroutine(o)]
        if len(funcs) >= 2:
            out.append(
                (
                    f"List the public functions of the `{mod_name}` module.",
                    f"The `{mod_name}` module provides: {', '.join(funcs)}.",
                    "list_functions",
                )
            )
        for name, obj in members:
            qual = f"{mod_name}.{name}"
            para = _first_paragraph(obj.__doc__)
            if inspect.isclass(obj):
                if para and para != _first_paragraph(type.__doc__):
                    out.append((f"What is the class `{qual}` for?", para, "explain_class"))
                methods = sorted(n for n, m in vars(obj).items() if not n.startswith("_") and inspect.isroutine(m))
                if len(methods) >= 2:
                    out.append(
                        (
                            f"Which public methods does `{qual}` define?",
                            f"`{qual}` defines {', '.join(methods)}.",
                            "methods",
                        )
                    )
                continue
            if para:
                out.append((f"What does `{qual}` do?", para, "explain"))
            sig = _signature(qual, obj)
            if sig:
                out.append((f"Give the call signature of `{qual}`.", sig, "signature"))
    return [{"instruction": i, "input": "", "output": o, "kind": k} for i, o, k in out]


def _near_duplicate(rng: random.Random, rec: dict) -> dict:
    words = rec["output"].split()
    swappable = [i for i, w in enumerate(words) if w.lower() in _SWAPS]
    for i in rng.sample(swappable, min(len(swappable), 2)):
        words[i] = _SWAPS[words[i].lower()]
    if len(words) > 3:
        j = rng.randrange(len(words) - 1)
        words[j], words[j + 1] = words[j + 1], words[j]
    out = " ".join(words)
    return {**rec, "output": out if out != rec["output"] else out + " (see the docs)"}


def make_realtext_pool(
    n_records: int = 2000, seed: int = 0, near_dup_rate: float = 0.05, junk_rate: float = 0.1
) -> list[dict]:
    """``n_records`` Alpaca records (``id``, ``instruction``, ``input``, ``output``, ``kind``,
    ``planted``): a seeded sample of :func:`candidate_records`, near-duplicates and junk planted."""
    rng = random.Random(seed)
    cands = candidate_records()
    n_dup = round(near_dup_rate * n_records)
    base = rng.sample(cands, min(len(cands), n_records - n_dup))
    records = [{"id": f"rt-{i:05d}", **rec, "planted": "clean"} for i, rec in enumerate(base)]
    for k in range(n_dup):
        src = rng.choice(records[: len(base)])
        records.append(
            {
                **_near_duplicate(rng, src),
                "id": f"rt-{len(base) + k:05d}",
                "planted": "near_duplicate",
                "duplicate_of": src["id"],
            }
        )
    rng.shuffle(records)
    return plant_junk(records, junk_rate, seed)


def make_realtext_testset(
    per_kind: int, n_records: int = 2000, seed: int = 0, near_dup_rate: float = 0.05
) -> list[dict]:
    """A clean test set for the pool of :func:`make_realtext_pool` ``(n_records, seed, near_dup_rate)``:
    up to ``per_kind`` Alpaca records of each task kind, a seeded draw from the candidates whose
    instruction no pool record asks (junk and near-duplicates only rewrite the responses of pool
    records), so no question of the pool is tested on and no junk is. Labels: ``kind``,
    ``planted: clean``; ids ``rt-test-NNNNN``."""
    asked = {rec["instruction"] for rec in make_realtext_pool(n_records, seed, near_dup_rate, 0.0)}
    fresh: dict[str, list[dict]] = {}
    for rec in candidate_records():
        if rec["instruction"] not in asked:
            fresh.setdefault(rec["kind"], []).append(rec)
    rng = random.Random(seed)
    picked = [rec for kind in sorted(fresh) for rec in rng.sample(fresh[kind], min(per_kind, len(fresh[kind])))]
    return [{"id": f"rt-test-{i:05d}", **rec, "planted": "clean"} for i, rec in enumerate(picked)]


def in_format(rec: dict, fmt: str) -> dict:
    """An Alpaca record rewritten in ``fmt`` (labels and ``id`` kept)."""
    labels = {k: v for k, v in rec.items() if k not in ("instruction", "input", "output")}
    if fmt == "alpaca":
        return rec
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
    if fmt == "sharegpt":
        return {**labels, "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": rec["output"]}]}
    return {**labels, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]}


def write_realtext_pool(
    out_dir: str | os.PathLike,
    n_records: int = 2000,
    seed: int = 0,
    near_dup_rate: float = 0.05,
    junk_rate: float = 0.1,
) -> dict[str, Path]:
    """Write the pool as ``out_dir/{alpaca,sharegpt,messages}.jsonl`` (records dealt in turn,
    junk planted in each format); return {format: path}."""
    clean = make_realtext_pool(n_records, seed, near_dup_rate, 0.0)
    by_format = {fmt: [in_format(r, fmt) for r in clean[k::3]] for k, fmt in enumerate(FORMATS)}
    paths = {}
    for k, fmt in enumerate(FORMATS):
        paths[fmt] = Path(out_dir) / f"{fmt}.jsonl"
        write_jsonl(paths[fmt], plant_junk(by_format[fmt], junk_rate, seed + k))
    return paths
