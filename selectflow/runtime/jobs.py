"""The top level of every Snakemake job: logging, GPU claim, OOM-only retries.

:func:`run_job` wraps a rule's one library call. It

* sends ``logging``, warnings and tqdm bars (stderr) to the rule's ``log:`` file;
* claims a GPU for GPU rules (:mod:`selectflow.runtime.gpus`);
* on an out-of-memory error logs one line (what ran out, the size used, the next
  attempt's size, the command that continues) and exits with :data:`EXIT_OOM`, so the
  Snakemake retry, which re-evaluates ``resources`` with a smaller size, can succeed;
* on any other error records the cause in ``{log}.failure.json``; a retry that finds a
  non-OOM cause there fails at once with the original error instead of running again
  with a smaller batch, because memory was not the problem;
* on success logs host and GPU peak memory and removes the failure record.

What it needs of the run's config (the ``retry`` section and ``gpu_id``) arrives one way:
every rule passes ``job=CFG.job``, a :class:`JobSettings`, as a param, and :func:`run_job`
reads ``snakemake.params.job``. It travels as the dataclass itself, not as a mapping, on
purpose: Snakemake's params rerun trigger skips values it cannot represent, so changing
how jobs are retried or which GPU they use reruns no job (neither changes an output).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selectflow.runtime.errors import EXIT_NOT_RETRIED, EXIT_OOM, EXIT_USER_ERROR, SelectFlowError
from selectflow.runtime.jobrecord import JobRecord
from selectflow.runtime.oom import attempt_size, is_oom, limit_address_space_growth, set_adaptive

log = logging.getLogger("selectflow.job")

RERUN_COMMAND = "snakemake --cores 1 --resources gpu=1"


@dataclass(frozen=True)
class RetryConfig:
    """The config's ``retry`` section (keys and defaults: ``schemas/config.schema.yaml``)."""

    factor: float
    adaptive_chunks: bool
    job_memory_budget_mb: float | None


@dataclass(frozen=True)
class JobSettings:
    """What :func:`run_job` needs of the run's config (``Config.job``): the retry section and ``gpu_id``."""

    retry: RetryConfig
    gpu_id: int | None


def _setup_logging(log_path: str) -> None:
    """Send logging and fd 2 to the log file; warnings and errors also to the console."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "a", buffering=1, encoding="utf-8")
    console = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(fh.fileno(), 2)
    sys.stderr = fh
    logging.basicConfig(
        level=logging.INFO,
        stream=fh,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    # faiss logs at INFO which of its builds it tried to load ("Could not load library with AVX2 …")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # transformers' "Loading weights" bars: carriage-return noise in a log file (set before it is imported)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # warnings and the out-of-memory line also reach the console, where the user watches the run;
    # other errors only the log, which Snakemake prints under "Logfile …" (show-failed-logs): once
    shown = logging.StreamHandler(console)
    shown.setLevel(logging.WARNING)
    shown.addFilter(lambda record: record.levelno < logging.ERROR or getattr(record, "console", False))
    shown.setFormatter(logging.Formatter("[selectflow] %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("selectflow").addHandler(shown)


def _peak_line() -> str:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = f"peak_host_rss_mb={rss_mb:.1f}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f" gpu_peak_allocated_mb={torch.cuda.max_memory_allocated() / 2**20:.1f}"
        text += f" gpu_peak_reserved_mb={torch.cuda.max_memory_reserved() / 2**20:.1f}"
    return text


def _write_failure(path: Path, kind: str, exc: BaseException, attempt: int) -> None:
    from selectflow.runtime.fsutil import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(
            {
                "kind": kind,
                "attempt": attempt,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            },
            fh,
            indent=1,
        )


def _after_failed_attempt(failure: Path, rule: str, attempt: int, size_name: str | None) -> None:
    """Log how the previous attempt failed (its ``.failure.json``); exit with :data:`EXIT_NOT_RETRIED` unless
    it ran out of memory, since a smaller size would not help."""
    previous = json.loads(failure.read_text())
    if previous.get("kind") != "oom":
        # the error itself was shown with attempt 1 (and stays in the .failure.json): not repeated
        kind = previous.get("error", "").split(":", 1)[0] or "an error"
        log.info(
            "attempt %d of rule %s skipped: attempt %s failed with %s, which is not an out-of-memory error, "
            "so a smaller %s would not help (its message is shown above, once; the full record is in %s)",
            attempt,
            rule,
            previous.get("attempt"),
            kind,
            size_name or "batch",
            failure,
        )
        sys.exit(EXIT_NOT_RETRIED)
    log.info("attempt %s failed with: %s", previous.get("attempt"), previous.get("error", "").splitlines()[0])


def run_job(
    snakemake,
    fn: Callable[[], object],
    *,
    size_name: str | None = None,
) -> None:
    """Run ``fn()`` as the body of a Snakemake ``script:`` job; exit with a status code.

    ``size_name`` names the attempt-scaled resource (e.g. ``batch_size``) the job uses,
    for the log lines. A rule that declares ``resources: gpu=1`` (its one GPU declaration)
    makes the job claim a device first (``gpu_id`` of ``snakemake.params.job`` forces one).
    """
    log_path = snakemake.log[0]
    _setup_logging(log_path)
    rule = snakemake.rule
    attempt = int(snakemake.resources.get("attempt", 1))
    failure = Path(f"{log_path}.failure.json")
    size = snakemake.resources.get(size_name) if size_name else None
    settings: JobSettings = snakemake.params.job
    retry = settings.retry
    log.info("rule %s, attempt %d%s", rule, attempt, f", {size_name}={size}" if size_name else "")

    if attempt > 1 and failure.exists():
        _after_failed_attempt(failure, rule, attempt, size_name)

    record = JobRecord.start(snakemake, size_name)  # {log}.job.json: the facts the report reads
    claim = None
    try:
        if int(snakemake.resources.get("gpu", 0) or 0) > 0:
            from selectflow.runtime.gpus import claim_gpu

            claim = claim_gpu(Path(".snakemake") / "selectflow_gpu_locks", settings.gpu_id)
        set_adaptive(retry.adaptive_chunks)
        if retry.job_memory_budget_mb:
            limit = limit_address_space_growth(retry.job_memory_budget_mb)
            log.info(
                "address space capped at %.0f MiB (retry.job_memory_budget_mb=%s)",
                limit / 2**20,
                retry.job_memory_budget_mb,
            )
        fn()
    except SelectFlowError as exc:
        log.error("%s", exc)
        _write_failure(failure, "input", exc, attempt)
        sys.exit(EXIT_USER_ERROR)
    except BaseException as exc:  # noqa: BLE001 - the job's top level
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if is_oom(exc):
            nxt = attempt_size(size, 2, retry.factor) if isinstance(size, int) else None
            line = (
                f"OUT OF MEMORY in rule {rule} (attempt {attempt}): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}; {size_name}={size}; next attempt uses "
                f"{size_name}={nxt}. Finished outputs are kept; Snakemake retries automatically (profiles/default), "
                f"or continue with: {RERUN_COMMAND}"
            )
            log.error("%s", line, extra={"console": True})  # also on the console
            _write_failure(failure, "oom", exc, attempt)
            sys.exit(EXIT_OOM)
        log.exception("rule %s failed (not an out-of-memory error; it will not be retried with a smaller size)", rule)
        _write_failure(failure, "error", exc, attempt)
        sys.exit(1)
    finally:
        if claim is not None:
            claim.release()
        record.finish(sys.exc_info()[1])
    failure.unlink(missing_ok=True)
    log.info("rule %s done: %s", rule, _peak_line())
