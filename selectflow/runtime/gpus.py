"""GPU assignment for Snakemake jobs: one free device per job, chosen before CUDA starts.

Snakemake never sets ``CUDA_VISIBLE_DEVICES`` (a scheduler such as SLURM may; then it is
kept). A GPU job calls :func:`claim_gpu`, which
takes an exclusive lock file ``{lock_dir}/gpu{N}.lock`` on the unclaimed device with the
most free memory (seed 003's "pick the freest GPU"), or on ``gpu_id`` when the config
forces one, then sets ``CUDA_VISIBLE_DEVICES`` so the job sees only that device. The lock
is an ``fcntl`` lock: the kernel drops it when the job dies, however it dies.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
from pathlib import Path

from selectflow.runtime.device import use_expandable_segments
from selectflow.runtime.errors import SelectFlowError

log = logging.getLogger(__name__)


def query_free_memory() -> dict[int, int]:
    """{device index: free MiB} from ``nvidia-smi``; empty when there is no NVIDIA GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    free = {}
    for line in out.strip().splitlines():
        idx, mib = (x.strip() for x in line.split(","))
        free[int(idx)] = int(mib)
    return free


class GpuClaim:
    """An exclusive claim on one GPU index (``index`` is None when no GPU was claimed)."""

    def __init__(self, index: int | None, handle=None):
        self.index, self._handle = index, handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _try_lock(lock_dir: Path, index: int):
    lock_dir.mkdir(parents=True, exist_ok=True)
    handle = open(lock_dir / f"gpu{index}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def claim_gpu(lock_dir: str | os.PathLike, gpu_id: int | None = None, free: dict[int, int] | None = None) -> GpuClaim:
    """Claim a device and point ``CUDA_VISIBLE_DEVICES`` at it; a no-op without GPUs.

    ``free`` (device → free MiB) defaults to :func:`query_free_memory`; it is a parameter
    so the choice can be tested on a machine without GPUs.
    """
    use_expandable_segments()
    if gpu_id is None and os.environ.get("CUDA_VISIBLE_DEVICES"):
        # a scheduler (SLURM) or the user already chose the device for this job
        log.info("using CUDA_VISIBLE_DEVICES=%s set outside the workflow", os.environ["CUDA_VISIBLE_DEVICES"])
        return GpuClaim(None)
    free = query_free_memory() if free is None else free
    if not free:
        return GpuClaim(None)
    if gpu_id is not None:
        if gpu_id not in free:
            raise SelectFlowError(
                f"gpu_id {gpu_id} does not exist (devices: {sorted(free)}); fix 'gpu_id' in the config"
            )
        candidates = [gpu_id]
    else:
        candidates = sorted(free, key=lambda i: (-free[i], i))
    for index in candidates:
        handle = _try_lock(Path(lock_dir), index)
        if handle is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
            log.info("claimed GPU %d (%d MiB free)", index, free[index])
            return GpuClaim(index, handle)
    raise SelectFlowError(
        f"all GPUs {candidates} are held by other jobs (locks in {lock_dir}); run with --resources gpu=N "
        "where N is at most the number of GPUs"
    )


_RULE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:")
_DIRECTIVE = re.compile(r"^    (\w+):")
_GPU = re.compile(r"^\s+gpu\s*=\s*(.+?),?\s*$")


def gpu_rules(rules_dir: str | os.PathLike) -> list[str]:
    """Rules of ``rules_dir/*.smk`` whose ``resources:`` declare ``gpu=`` (a literal 0 aside), sorted.

    A rule's ``resources: gpu=1`` is its one GPU declaration: the job wrapper claims a device
    from it, and the SLURM profile (``profiles/slurm``) asks for a GPU from this list. A
    function (``gpu=lambda …``) counts: the rule may use a GPU.
    """
    paths = sorted(Path(rules_dir).glob("*.smk"))
    if not paths:
        raise SelectFlowError(f"no *.smk in {rules_dir}: run Snakemake from the root of a checkout of the workflow")
    found = set()
    for path in paths:
        rule = directive = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if m := _RULE.match(line):
                rule, directive = m.group(1), None
            elif not line.startswith(" ") and line.strip():
                rule = directive = None  # Python code between rules
            elif m := _DIRECTIVE.match(line):
                directive = m.group(1)
            elif rule and directive == "resources" and (m := _GPU.match(line)) and m.group(1) != "0":
                found.add(rule)
    return sorted(found)
