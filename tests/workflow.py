"""Helpers for tests that run the real Snakemake workflow in a scratch folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake_command(workdir: Path, *args: str, config: str | Path = "small") -> list[str]:
    """The ``python -m snakemake`` command line on the repo's Snakefile in ``workdir`` with a test config
    (a name under tests/configs, or a path); ``args`` first."""
    config_path = config if isinstance(config, Path) else REPO / "tests" / "configs" / config / "config.yaml"
    return [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config_path),
    ]


def snakemake(
    workdir: Path,
    *args: str,
    config: str | Path = "small",
    timeout: int = 900,
    check: bool = True,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on the repo's Snakefile inside ``workdir`` with a test config.

    ``args`` come first: targets must precede options such as ``--resources`` that take
    several values.
    """
    cmd = snakemake_command(workdir, *args, config=config)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def config_variant(name: str, folder: Path, **changes) -> Path:
    """Write tests/configs/{name} with top-level sections updated by ``changes`` into ``folder``."""
    config = yaml.safe_load((REPO / "tests" / "configs" / name / "config.yaml").read_text())
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / f"{name}-variant.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ran_jobs(proc: subprocess.CompletedProcess) -> list[str]:
    """Rule names of the jobs a Snakemake run executed, from its log on stderr."""
    lines = (proc.stdout + proc.stderr).splitlines()
    starts = ("rule ", "localrule ", "checkpoint ", "localcheckpoint ")
    return [ln.split()[-1].rstrip(":") for ln in lines if ln.startswith(starts)]
