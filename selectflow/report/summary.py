"""The console summary printed when a workflow run ends (Snakemake ``onsuccess:``/``onerror:``).

:func:`run_summary` reads only files the run wrote, each defensively (a stage that did
not run, or a table with other columns, leaves its part out) and returns the text:

* per dataset: pool / kept / candidates / selected / duplicates dropped, exact or near, and
  shared answers dropped (``same_answer_as``) (``selection_summary.tsv``, else counted from
  ``quality.tsv``);
* the quality method actually used (``candidates.h5`` attributes, else the ``candidates``
  log), the selection stage and, from the config, the diversity method (FPS's weight and
  snapping with it);
* where the outputs are;
* the warnings (and, on failure, errors) the jobs logged during this run, each message
  once with its count, from the run's job logs;
* the next commands: the report, and a selection with other settings on the saved
  router data.

Every path comes from :class:`selectflow.layout.Layout`. Imports only the standard library,
pandas, h5py and :mod:`selectflow.select.write` (which counts the drop reasons), so it costs
nothing at the end of a run.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

from selectflow.layout import Layout
from selectflow.select.write import REASON_PREFIXES, count_reason

log = logging.getLogger(__name__)

COUNT_COLUMNS = ("pool", "kept", "candidates", "selected", "duplicates", "shared_answers")
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ (WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")
MAX_MESSAGES = 8


def _read_tsv(path: Path):
    """The table at ``path``, or None when it is missing or unreadable (a summary reads defensively)."""
    from selectflow.runtime.errors import SelectFlowError
    from selectflow.runtime.tables import read_tsv

    try:
        return read_tsv(path, "table")
    except (SelectFlowError, OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None


def _flag(column) -> object:
    return column.astype(str).str.lower().isin(("true", "1"))


def selection_counts(paths: Layout) -> list[dict]:
    """Per dataset ``{"dataset", "pool", "kept", "candidates", "selected", "duplicates", "shared_answers"}`` (None
    when unknown).

    Read from the run's ``selection_summary.tsv`` by column name; counts it lacks come from
    ``quality.tsv`` (``kept`` / ``candidate`` flags) and ``fps_curve.tsv`` (the picks).
    """
    rows: dict[str, dict] = {}
    summary = _read_tsv(Path(paths.selection_summary))
    if summary is not None and "dataset" in summary:
        for rec in summary.to_dict("records"):
            rows[str(rec["dataset"])] = {c: _int(rec.get(c)) for c in COUNT_COLUMNS}
    quality = _read_tsv(Path(paths.quality))
    if quality is not None and "dataset" in quality:
        picked = None
        curve = _read_tsv(Path(paths.fps_curve))
        if curve is not None and "sample_id" in curve and "sample_id" in quality:
            picked = quality["sample_id"].isin(set(curve["sample_id"]))
        for name, part in quality.groupby("dataset", sort=True):
            row = rows.setdefault(str(name), dict.fromkeys(COUNT_COLUMNS))
            derived = {
                "pool": len(part),
                "kept": int(_flag(part["kept"]).sum()) if "kept" in part else None,
                "candidates": int(_flag(part["candidate"]).sum()) if "candidate" in part else None,
                "selected": int(picked[part.index].sum()) if picked is not None else None,
            } | {
                column: count_reason(part["reason"], prefix) if "reason" in part else None
                for column, prefix in REASON_PREFIXES.items()
            }
            for key, value in derived.items():
                if row.get(key) is None:
                    row[key] = value
    return [{"dataset": name, **rows[name]} for name in sorted(rows)]


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def quality_method(paths: Layout) -> dict:
    """``{"quality_method", "stage", "metric", "n_pool", "n_kept", "k"}`` known for this run (may be empty).

    From ``candidates.h5``'s attributes; without that file, from the ``candidates`` log
    line ``pool N, kept N, candidates N (stage), k N``.
    """
    path = Path(paths.candidates_h5)
    if path.is_file():
        try:
            import h5py

            with h5py.File(path, "r") as f:
                return {
                    k: (v.item() if hasattr(v, "item") else v)
                    for k, v in f.attrs.items()
                    if k in ("quality_method", "stage", "metric", "n_pool", "n_kept", "k")
                }
        except OSError as exc:
            log.debug("cannot read %s: %s", path, exc)
    found: dict = {}
    cand_log = Path(paths.candidates_log)
    if cand_log.is_file():
        text = cand_log.read_text(encoding="utf-8", errors="replace")
        m = re.findall(r"pool (\d+), kept (\d+), candidates (\d+) \((\w+)\), k (\d+)", text)
        if m:
            n_pool, n_kept, _, stage, k = m[-1]
            found.update(n_pool=int(n_pool), n_kept=int(n_kept), stage=stage, k=int(k))
        m = re.findall(r"quality method:? (\w+)", text)
        if m:
            found["quality_method"] = m[-1]
    return found


def logged_messages(
    log_dir: str | os.PathLike, since: float | None = None, levels: tuple[str, ...] = ("WARNING",)
) -> list[tuple[str, str, int]]:
    """``(level, "logfile: logger: message", count)`` for log lines of ``levels`` under ``log_dir``.

    Only lines stamped at or after ``since`` (a POSIX time; logs are appended to across
    runs). The same message in the same log counts once; the first-seen order is kept.
    """
    log_dir = Path(log_dir)
    counts: Counter = Counter()
    level_of: dict[str, str] = {}
    start = datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S") if since is not None else ""
    for path in sorted(log_dir.rglob("*.log")) if log_dir.is_dir() else []:
        if since is not None and path.stat().st_mtime < since - 1:
            continue
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            m = _LOG_LINE.match(line)
            if not m or m.group(2) not in levels or m.group(1) < start[:19]:
                continue
            key = f"{path}: {m.group(3)}: {m.group(4).strip()}"
            counts[key] += 1
            level_of.setdefault(key, m.group(2))
    return [(level_of[key], key, n) for key, n in counts.items()]


def failed_jobs(log_dir: str | os.PathLike, since: float | None = None) -> list[tuple[str, str]]:
    """``(log file, error type)`` of each job whose last attempt failed (its ``.log.failure.json``, see
    :mod:`selectflow.runtime.jobs`), written at or after ``since``."""
    import json

    log_dir = Path(log_dir)
    out = []
    for path in sorted(log_dir.rglob("*.log.failure.json")) if log_dir.is_dir() else []:
        if since is not None and path.stat().st_mtime < since - 1:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        kind = "out of memory" if record.get("kind") == "oom" else str(record.get("error", "")).split(":", 1)[0]
        out.append((str(path)[: -len(".failure.json")], kind))
    return out


def _table(rows: list[dict]) -> list[str]:
    head = ("dataset", *COUNT_COLUMNS)
    cells = [[str(r["dataset"])] + ["?" if r[c] is None else f"{r[c]:,}" for c in COUNT_COLUMNS] for r in rows]
    if len(rows) > 1:
        total = ["all"] + [
            ("?" if any(r[c] is None for r in rows) else f"{sum(r[c] for r in rows):,}") for c in COUNT_COLUMNS
        ]
        cells.append(total)
    width = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]

    def fmt(row):
        return "  " + "  ".join((v.ljust(w) if i == 0 else v.rjust(w)) for i, (v, w) in enumerate(zip(row, width)))

    return [fmt(head), *(fmt(c) for c in cells)]


def _outputs(paths: Layout) -> list[str]:
    entries = [
        (paths.selected_data, "the selected records, in pick order"),
        (paths.quality, "every pool sample: quality score, reason (selected, not_picked, dropped why)"),
        (paths.selection_summary, "the table above"),
        (paths.train_checkpoint, "the model fine-tuned on the selection"),
        (paths.indexes, "one FAISS index file per window"),
        (paths.neighbors, "nearest pool neighbours of each selected record"),
        (paths.report, "the report's figures"),
        (paths.logs, "one log per job"),
    ]
    shown = [(Path(p), text) for p, text in entries if Path(p).exists()]
    width = max((len(str(p)) + (1 if p.is_dir() else 0) for p, _ in shown), default=0)
    return [f"  {(str(p) + ('/' if p.is_dir() else '')).ljust(width)}  {text}" for p, text in shown]


def _diversity(sel: dict) -> str:
    """How the picks were spread, from the selection section: the method, with FPS's weight, hold-backs and
    snapping (``fps (fps_weight: lof_cut, fps_quality_hold_back: 0.05, fps_boilerplate_cut_z: 3.5)``, the
    default; ``fps`` for plain FPS)."""
    diversity = sel.get("diversity", "fps")
    keys = ("fps_weight", "fps_quality_hold_back", "fps_relevance_hold_back", "fps_boilerplate_cut_z", "fps_snap")
    if diversity == "stratified":  # it reads the hold-backs: lof_cut and the hold-back keys
        keys = keys[:-1]
    elif diversity != "fps":
        return diversity
    settings = [f"{key}: {sel[key]}" for key in keys if sel.get(key, "none") not in ("none", 0, None)]
    return diversity + (f" ({', '.join(settings)})" if settings else "")


def run_summary(config: dict, *, ok: bool = True, since: float | None = None, workdir: str | os.PathLike = ".") -> str:
    """The end-of-run summary of the run ``config`` describes, as text (see the module doc)."""
    run = config["run"]  # config: checked against the schema, its defaults filled in
    paths = Layout(run, workdir)
    log_dir = Path(paths.logs)
    sel_dir = Path(paths.selection)
    lines = [f"SelectFlow run '{run}': " + ("finished" if ok else "FAILED (the job errors are shown above)")]
    counts = selection_counts(paths)
    if counts:
        lines += ["", f"selection ({sel_dir}):", *_table(counts)]
    method = quality_method(paths)
    if method:
        asked = config.get("selection", {}).get("quality_method")
        text = f"  quality method: {method.get('quality_method', '?')}"
        if asked and asked != method.get("quality_method"):
            text += f" (selection.quality_method: {asked})"
        stage = method.get("stage")
        if stage:
            text += f"; stage: {stage}"
            sel = config.get("selection", {})
            if stage == "two_stage":
                text += (
                    f" (top {sel.get('importance_selection_percentage')} of the pool by quality, "
                    f"then FPS picks {sel.get('selection_percentage')})"
                )
        if stage and stage != "quality":
            text += f"; diversity: {_diversity(config.get('selection', {}))}"
        if method.get("metric"):
            text += f"; distance: {method['metric']}"
        lines.append(text)
    if not counts and not method:
        lines += [
            "",
            "  no selection results yet (the run stopped before rule candidates, or its target excludes them)",
        ]
    outputs = _outputs(paths)
    if outputs:
        lines += ["", "outputs:", *outputs]
    if not ok:
        failed = failed_jobs(log_dir, since)
        if failed:
            lines += ["", f"failed jobs ({len(failed)}; the message of each is in its log, printed above):"]
            lines += [f"  {path} ({kind})" for path, kind in failed]
    levels = ("WARNING",) if ok else ("WARNING", "ERROR", "CRITICAL")
    messages = logged_messages(log_dir, since, levels)
    if messages:
        lines += ["", f"{'warnings' if ok else 'warnings and errors'} logged during this run ({len(messages)}):"]
        for level, text, n in messages[:MAX_MESSAGES]:
            lines.append(f"  {level} {text}" + (f" (x{n})" if n > 1 else ""))
        if len(messages) > MAX_MESSAGES:
            lines.append(f"  … {len(messages) - MAX_MESSAGES} more: grep -r WARNING {log_dir}")
    else:
        lines += ["", "no warnings logged during this run."]
    lines += ["", "next:"]
    if ok:
        lines.append("  snakemake --report report.html   # figures and captions; open report.html in a browser")
        router_data = Path(paths.router_data)
        if router_data.is_dir():
            pct = config["selection"]["selection_percentage"]
            lines.append(
                f"  selectflow continue-selection --router-data-dir {router_data} \\\n"
                f"      --output-path /tmp/{run}_compare/selected_data.jsonl --selection-percentage "
                f"{min(1.0, 2 * float(pct)):g}   # another selection on the saved routing, to compare"
            )
    else:
        lines.append("  fix the cause named in the job log, then run the same snakemake command again:")
        lines.append("  finished outputs are kept, only the rest is redone.")
    return "\n".join(lines) + "\n"


def print_run_summary(config: dict, *, ok: bool = True, since: float | None = None) -> None:
    """Print :func:`run_summary` on the console; never raises (a summary must not fail a run)."""
    try:
        text = run_summary(config, ok=ok, since=since)
    except Exception as exc:  # noqa: BLE001 - the run itself is over; report and go on
        text = f"(no run summary: {type(exc).__name__}: {exc})\n"
    bar = "=" * 78
    sys.stdout.write(f"\n{bar}\n{text}{bar}\n")
    sys.stdout.flush()
