"""Instruction-data JSONL: format detection, normalisation, sample ids and shards.

Three input formats, detected per file from the first record:

* ``alpaca``:   ``{"instruction", "input"?, "output"}``
* ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}...]}``
* ``messages``: ``{"messages": [{"role": "user"|"assistant"|"system", "content"}...]}``

Every record becomes a *normalised record* (a dict, one JSON line in a shard)::

    {"sample_id": str, "dataset": str, "line": int,
     "prompt": str,      # text the model conditions on
     "response": str,    # text whose tokens carry the loss / NLL
     "record": {...}}    # the original record, untouched

``sample_id`` is the record's ``id`` when every record of the file has one and they are
unique, else ``"{dataset}:{line}"`` (1-based line number). An ``id`` that could not survive
the chain (HDF5, TSV, FAISS id files) is refused where the file is read: see :func:`check_id`.

Files are read as UTF-8 JSON Lines (a UTF-8 byte-order mark is accepted, ``.gz`` files are
read directly); anything else stops with ``file:line: what; what to do``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_open

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "sharegpt", "messages")
_USER_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant"}
MAX_ID_LENGTH = 256


def detect_format(record: dict) -> str:
    """Return the format name of one parsed record, or raise if it matches none."""
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "instruction" in record or "output" in record:
        return "alpaca"
    raise ValueError(
        "record matches no known format: expected 'instruction'/'output' (Alpaca), "
        "'conversations' (ShareGPT) or 'messages' (OpenAI)"
    )


def format_turns(turns: list[tuple[str, str]]) -> str:
    """Render (role, text) turns before the final response as one prompt string."""
    parts = []
    for role, text in turns:
        tag = {"system": "System", "user": "User", "assistant": "Assistant"}[role]
        parts.append(f"### {tag}:\n{text}\n\n")
    parts.append("### Assistant:\n")
    return "".join(parts)


def _alpaca(record: dict) -> tuple[str, str]:
    for key in ("instruction", "output"):
        if key not in record:
            raise ValueError(f"Alpaca record has no '{key}' field")
        if not isinstance(record[key], str):
            raise ValueError(f"Alpaca field '{key}' must be a string")
    user = record["instruction"]
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("Alpaca field 'input' must be a string")
    if extra:
        user = f"{user}\n\n{extra}"
    return format_turns([("user", user)]), record["output"]


def turn_text(content: object, where: str) -> str:
    """The text of one turn: a non-empty string, or an OpenAI list of ``{"type": "text", "text"}`` parts (joined)."""
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content, start=1):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"{where} part {k} has no string 'text'")
            if kind != "text":
                raise ValueError(
                    f'{where} part {k} is {kind!r}, not a text part ({{"type": "text", "text": …}}); '
                    "only text can be trained on"
                )
            texts.append(part["text"])
        content = "\n".join(texts)
    elif content is not None and not isinstance(content, str):
        raise ValueError(f"{where} is of type {type(content).__name__}, not text")
    if content is None or not content.strip():
        raise ValueError(f"{where} is {'null' if content is None else 'empty'}")
    return content


def _dialogue(items: list, role_key: str, text_key: str, kind: str) -> tuple[str, str]:
    if not isinstance(items, list) or not items:
        raise ValueError(f"{kind} record has an empty or non-list conversation")
    turns = []
    for item in items:
        if not isinstance(item, dict) or role_key not in item or text_key not in item:
            raise ValueError(f"{kind} turn needs '{role_key}' and '{text_key}'")
        role = str(item[role_key]).lower()
        role = "user" if role in _USER_ROLES else "assistant" if role in _ASSISTANT_ROLES else role
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"{kind} turn has unknown {role_key} {item[role_key]!r}")
        if role == "system" and (item[text_key] is None or item[text_key] == ""):
            continue  # an empty system prompt says nothing; real chat exports are full of them
        turns.append((role, turn_text(item[text_key], f"{kind} turn {len(turns) + 1} ({role}) '{text_key}'")))
    last = max((i for i, (r, _) in enumerate(turns) if r == "assistant"), default=None)
    if last is None:
        raise ValueError(f"{kind} record has no assistant turn (no response)")
    if not any(r == "user" for r, _ in turns[:last]):
        raise ValueError(f"{kind} record has no user turn before the response (no instruction)")
    return format_turns(turns[:last]), turns[last][1]


def prompt_and_response(record: dict, fmt: str) -> tuple[str, str]:
    """Split one record of format ``fmt`` into (prompt text, response text)."""
    if fmt == "alpaca":
        return _alpaca(record)
    if fmt == "sharegpt":
        return _dialogue(record["conversations"], "from", "value", "ShareGPT")
    return _dialogue(record["messages"], "role", "content", "messages")


_COMPRESSED = {b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def to_jsonl_command(path: Path) -> str:
    """Shell commands that turn the JSON array file ``path`` into JSON Lines."""
    out = f"{path.stem}.jsonl" if path.suffix != ".jsonl" else f"{path.stem}.lines.jsonl"
    return (
        f"jq -c '.[]' {path.name} > {out}, or python -c \"import json,sys; "
        f'[print(json.dumps(r, ensure_ascii=False)) for r in json.load(sys.stdin)]" < {path.name} > {out}'
    )


def open_lines(path: Path):
    """The file as binary lines: gzip read directly; other compressed or UTF-16 files refused."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise SelectFlowError(
                f"{path}:1: this is a {kind} file, not JSON Lines; decompress it first (gzip files are read directly)"
            )
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise SelectFlowError(
            f"{path}:1: this file is UTF-16, not UTF-8; convert it with "
            f"iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}"
        )
    return open(path, "rb")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    if lineno == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SelectFlowError(
            f"{path}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line); "
            f"re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix} "
            "if it is Latin-1"
        ) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line; a bad line raises naming file and line.

    UTF-8 only (a byte-order mark is skipped); a gzip file is read directly. A JSON array
    (one line or pretty-printed) is refused with the command that converts it.
    """
    path = Path(path)
    first = True
    with open_lines(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            if first and line.lstrip().startswith("["):
                raise SelectFlowError(
                    f"{path}:{lineno}: this is a JSON array, not JSON Lines (one object per line); "
                    f"convert it with {to_jsonl_command(path)}"
                )
            first = False
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SelectFlowError(
                    f"{path}:{lineno}: malformed JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}); "
                    "fix or remove this line"
                ) from None
            except RecursionError:
                raise SelectFlowError(
                    f"{path}:{lineno}: JSON nested too deeply to read; flatten or remove this record"
                ) from None
            if not isinstance(record, dict):
                raise SelectFlowError(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}; fix or remove this line"
                )
            if _LONE_SURROGATE_ESCAPE.search(raw):
                try:
                    json.dumps(record, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise SelectFlowError(
                        f"{path}:{lineno}: invalid \\u escape {exc.object[exc.start : exc.end]!r} "
                        "(half of a UTF-16 surrogate pair, not a character); fix or remove this record"
                    ) from None
            yield lineno, record


def check_id(rid: object) -> str | None:
    """Why ``rid`` cannot be a sample id (None when it can): ids go into HDF5, TSV and FAISS id files."""
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return f"a {type(rid).__name__}, not a string or integer"
    text = str(rid)
    if not text.strip():
        return "empty"
    if len(text) > MAX_ID_LENGTH:
        return f"{len(text)} characters long (at most {MAX_ID_LENGTH})"
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        return f"holds the control character {bad!r}"
    return None


def read_dataset(path: str | os.PathLike, dataset: str, *, one_format: bool = True) -> list[dict]:
    """Read one JSONL file into normalised records (see module docstring).

    A dataset file holds one format, detected from its first record; ``one_format=False``
    detects each record's own (a target set, which may gather records of several datasets).
    """
    path = Path(path)
    if not path.is_file():
        raise SelectFlowError(
            f"dataset '{dataset}': file {path} does not exist; fix 'datasets.{dataset}' in the config"
        )
    parsed = list(iter_jsonl(path))
    if not parsed:
        raise SelectFlowError(f"dataset '{dataset}': {path} holds no records; remove it from 'datasets' or fill it")
    try:
        fmt = detect_format(parsed[0][1])
    except ValueError as exc:
        raise SelectFlowError(f"{path}:{parsed[0][0]}: {exc}; fix or remove this record") from None
    ids = [rec.get("id") for _, rec in parsed]
    use_ids = all(i is not None for i in ids) and len({str(i) for i in ids}) == len(ids)
    for (lineno, _), rid in zip(parsed, ids) if use_ids else ():
        why = check_id(rid)
        if why is not None:
            shown = repr(rid) if len(repr(rid)) <= 60 else repr(rid)[:57] + "..."
            raise SelectFlowError(
                f"{path}:{lineno}: 'id' {shown} cannot be a sample id ({why}); fix it, or drop the 'id' "
                f"field from every record of the file (ids become '{dataset}:<line>')"
            )
    if any(i is not None for i in ids) and not use_ids:
        log.warning("%s: 'id' missing or repeated; sample ids fall back to '%s:<line>'", path, dataset)
    out = []
    for (lineno, record), rid in zip(parsed, ids):
        try:
            own = detect_format(record)
            if one_format and own != fmt:
                raise ValueError(f"record is not in the file's format ({fmt}, detected from line {parsed[0][0]})")
            prompt, response = prompt_and_response(record, own)
        except ValueError as exc:
            raise SelectFlowError(f"{path}:{lineno}: {exc}; fix or remove this record") from None
        out.append(
            {
                "sample_id": str(rid) if use_ids else f"{dataset}:{lineno}",
                "dataset": dataset,
                "line": lineno,
                "prompt": prompt,
                "response": response,
                "record": record,
            }
        )
    log.info("%s: %d %s records", path, len(out), fmt if one_format else "mixed-format")
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file the workflow wrote (shards, selections)."""
    return [rec for _, rec in iter_jsonl(Path(path))]


def record_prompt_response(record: dict) -> tuple[str, str]:
    """(prompt, response) of a normalised record, or of an original one in any input format."""
    if isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        return record["prompt"], record["response"]
    return prompt_and_response(record, detect_format(record))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Atomically write records as JSON lines; return how many were written."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def split_into_shards(path: str | os.PathLike, dataset: str, out_dir: str | os.PathLike, shard_size: int) -> list[Path]:
    """Write ``out_dir/shard_XXXXX.jsonl`` files of at most ``shard_size`` normalised records.

    The folder appears whole or not at all (it is built beside and renamed).
    """
    from selectflow.runtime.fsutil import atomic_dir

    if shard_size < 1:
        raise SelectFlowError(f"shard_size must be >= 1, got {shard_size}")
    records = read_dataset(path, dataset)
    names = []
    with atomic_dir(out_dir) as tmp:
        for k, start in enumerate(range(0, len(records), shard_size)):
            write_jsonl(Path(tmp) / f"{shard_name(k)}.jsonl", records[start : start + shard_size])
            names.append(Path(out_dir) / f"{shard_name(k)}.jsonl")
    return names
