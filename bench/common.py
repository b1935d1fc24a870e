"""What several benches share: a scratch copy of a checkout and Snakemake runs in it.

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import export, snakemake
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export(ref: str | None, dest: Path) -> Path:
    """``ref`` (a commit) or, for None, the working tree's tracked and new files, into ``dest``."""
    dest.mkdir(parents=True)
    if ref is not None:
        archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return dest
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def snakemake(folder: Path, cores: int, targets: list[str], configfiles: list[str]) -> None:
    """``snakemake targets`` in ``folder`` (the demo chain when there are none); exits with the
    log's tail when it fails. Targets before ``--resources`` and ``--configfile`` last: both take
    several values."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores), "--resources", "gpu=1"]
    cmd += ["--configfile", *configfiles] if configfiles else []
    proc = subprocess.run(
        cmd, cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(folder)}
    )
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {folder}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    print(f"  {' '.join(targets) or 'demo chain'} ... {time.perf_counter() - t0:.0f} s", flush=True)


def write_junk_suite_pool(path: Path, n: int, seed: int, junk_rate: float) -> Path:
    """The junk-suite pool: demo seed ``seed``, ``n`` records without the demo's own junk, the junk
    suite (every kind) planted at ``junk_rate``; written to ``path`` unless it is there already."""
    from selectflow.data.demo import make_demo_pool
    from selectflow.data.junk import plant_junk
    from selectflow.data.records import write_jsonl

    if not path.is_file():
        write_jsonl(path, plant_junk(make_demo_pool(n, seed, junk_rate=0.0), junk_rate, seed))
    return path


def write_real_text_pool(folder: Path, n: int, seed: int, junk_rate: float) -> list[Path]:
    """The real-text pool (:func:`selectflow.data.realtext.write_realtext_pool`: ``n`` records, seed ``seed``,
    the junk suite at ``junk_rate``) as one file a format in ``folder``, unless they are all there already;
    the files, in :data:`~selectflow.data.realtext.FORMATS` order."""
    from selectflow.data.realtext import FORMATS, write_realtext_pool

    paths = [folder / f"{fmt}.jsonl" for fmt in FORMATS]
    if not all(p.is_file() for p in paths):
        write_realtext_pool(folder, n, seed, junk_rate=junk_rate)
    return paths
