"""The workflow on a real single-node SLURM cluster, through profiles/slurm.

Needs root and the SLURM Debian packages: .ci/slurm.sh installs them and runs this file
with SELECTFLOW_SLURM=1; everywhere else it is skipped. tests/slurm/cluster.sh starts
munged, slurmctld and slurmd (one node, two fake GPUs of model "fake", partitions
"debug" and "all") for the module and stops them by their PID files afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "slurm"
CONFIG = HERE / "config" / "config.yaml"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        os.environ.get("SELECTFLOW_SLURM") != "1",
        reason="needs a SLURM cluster of its own: run .ci/slurm.sh (sets SELECTFLOW_SLURM=1)",
    ),
]

# Cluster-friendly defaults of the profile, shortened for a test: without slurmdbd sacct
# does not work, and the first status check would come only after 40 s.
SLURM_ARGS = [
    "--profile",
    str(REPO / "profiles" / "slurm"),
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
]
# the site settings of the demo runs: a partition named like a Python builtin, the fake GPUs
SITE = {"SELECTFLOW_SLURM_PARTITION": "all", "SELECTFLOW_SLURM_GPU_MODEL": "fake"}
SEL = "results/slurm/selection"


def snakemake(workdir: Path, *args: str, env: dict[str, str], snakefile: Path = REPO / "Snakefile") -> subprocess.Popen:
    """Start ``snakemake ARGS -s SNAKEFILE -d WORKDIR`` with stdout+stderr in WORKDIR/snakemake.out."""
    workdir.mkdir(parents=True, exist_ok=True)
    # a developer's own site settings must not leak into the run
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SELECTFLOW_SLURM_")}
    with open(workdir / "snakemake.out", "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args, "-s", str(snakefile), "-d", str(workdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**clean, **env},
            cwd=REPO,
        )


def finish(proc: subprocess.Popen, workdir: Path, timeout: int = 600) -> str:
    """Wait for a run from :func:`snakemake`; its output, or an AssertionError showing it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = (workdir / "snakemake.out").read_text()
    if proc.returncode != 0:
        raise AssertionError(f"snakemake in {workdir} failed ({proc.returncode}):\n{text[-10000:]}")
    return text


def slurm_jobs(run_log: str, env: dict[str, str]) -> list[dict[str, str]]:
    """Every SLURM job of one Snakemake run (its job name is the run ID), oldest first."""
    run_id = re.search(r"SLURM run ID: (\S+)", run_log).group(1)
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True, env={**os.environ, **env}
    ).stdout
    jobs = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]
    return sorted((j for j in jobs if j["JobName"] == run_id), key=lambda j: int(j["JobId"]))


def gpu_rules(run_log: str) -> set[str]:
    """Rules whose jobs a Snakemake run announced with resources gpu=1."""
    found, rule = set(), None
    for line in run_log.splitlines():
        if m := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            rule = m.group(1)
        elif line.lstrip().startswith("resources:") and re.search(r"\bgpu=1\b", line):
            found.add(rule)
    return found


def h5_contents(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an HDF5 file, by name."""
    found: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        found.update({f"@{k}": v for k, v in f.attrs.items()})
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def outputs(workdir: Path) -> dict[str, object]:
    """What the demo chain produced under results/, HDF5 as contents, other files as bytes.

    The resources figure plots each job's runtime and memory, which differ between any two
    runs; everything else must be identical.
    """
    files = sorted(p for p in (workdir / "results").rglob("*") if p.is_file() and p.name != "resources.png")
    return {str(p.relative_to(workdir)): h5_contents(p) if p.suffix == ".h5" else p.read_bytes() for p in files}


def assert_same(local: dict[str, object], slurm: dict[str, object]) -> None:
    assert local.keys() == slurm.keys()
    for name, want in local.items():
        got = slurm[name]
        if isinstance(want, dict):
            assert want.keys() == got.keys(), name
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")
        else:
            assert got == want, name


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of a fresh single-node cluster, stopped after the module's tests."""
    # not under pytest's tmp_path: that is private to root, and munged runs as user munge
    state = Path(tempfile.mkdtemp(prefix="selectflow-slurm-"))
    script = HERE / "cluster.sh"
    try:
        subprocess.run(["bash", str(script), "start", str(state)], check=True, timeout=120)
        yield {"SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], check=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_runs(cluster, tmp_path_factory):
    """The demo chain run locally (one FPS rank) and through SLURM: (local folder, SLURM folder, SLURM run's output)."""
    root = tmp_path_factory.mktemp("demo")
    # the local reference run shares the two cores with the SLURM run, which mostly waits
    local = snakemake(root / "local", "--configfile", str(CONFIG), "--cores", "1", "--resources", "gpu=1", env={})
    on_slurm = snakemake(root / "slurm", "--configfile", str(CONFIG), *SLURM_ARGS, env={**cluster, **SITE})
    finish(local, root / "local")
    return root / "local", root / "slurm", finish(on_slurm, root / "slurm")


def job_rule(job: dict[str, str]) -> str:
    """The rule of a SLURM job the plugin submitted (its comment is rule_NAME[_wildcards_…])."""
    return re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["Comment"]).group(1)


def test_demo_chain_on_slurm_matches_local_run(cluster, demo_runs):
    local, slurm, log = demo_runs
    produced = outputs(slurm)
    assert f"{SEL}/selected_data.jsonl" in produced
    assert_same(outputs(local), produced)

    jobs = slurm_jobs(log, cluster)
    rules = [job_rule(j) for j in jobs]
    # every job but the local target rules went through sbatch
    assert set(rules) == set(re.findall(r"^(?:rule|checkpoint) (\w+):$", log, re.M))
    gpu = gpu_rules(log)
    assert "router_dump" in gpu
    # per-shard work goes in groups: one sbatch job dumps both shards (router_dump.shards_per_job 8), and
    # one local job links every shard into router_data (no job a shard)
    assert rules.count("router_dump") == 1
    assert len(re.findall(r"^local(?:rule|checkpoint) router_data:$", log, re.M)) == 1
    assert all(j["JobState"] == "COMPLETED" and j["Partition"] == "all" for j in jobs)
    for job, rule in zip(jobs, rules):
        # attempt 1 of the profile's requests; GPU rules get SELECTFLOW_SLURM_GPU_MODEL
        if rule in gpu:
            want = ("gres:gpu:fake:1", "16000M", "04:00:00")
        else:
            want = (None, "4000M", "01:00:00")
        assert (job.get("TresPerJob"), job["MinMemoryNode"], job["TimeLimit"]) == want, (rule, job)


def test_fps_on_two_slurm_gpus_picks_what_one_rank_picks(cluster, demo_runs, tmp_path):
    # the SLURM run again with selection.fps_gpus: 2: the changed section reruns the selection, not the dump
    local, slurm, _ = demo_runs
    wd = tmp_path / "wd"
    shutil.copytree(slurm, wd, symlinks=True)
    two_ranks = tmp_path / "two_ranks.yaml"
    two_ranks.write_text("selection:\n  fps_gpus: 2\n")
    log = finish(
        snakemake(
            wd,
            f"{SEL}/selected_data.jsonl",
            "--configfile",
            str(CONFIG),
            str(two_ranks),
            *SLURM_ARGS,
            env={**cluster, **SITE},
        ),
        wd,
    )

    jobs = {job_rule(j): j for j in slurm_jobs(log, cluster)}
    assert "fps" in jobs and "router_dump" not in jobs
    fps = jobs["fps"]
    # both fake GPUs of the node and a CPU for each rank, on one node
    assert (fps["JobState"], fps.get("TresPerJob"), fps["NumCPUs"], fps["NumNodes"]) == (
        "COMPLETED",
        "gres:gpu:fake:2",
        "2",
        "1",
    ), fps
    fps_log = (wd / "logs/slurm/selection/fps.log").read_text()
    # SLURM's CUDA_VISIBLE_DEVICES stands, and with CPU torch the two ranks run gloo, sharing the job's two CPUs
    assert "using CUDA_VISIBLE_DEVICES=0,1 set outside the workflow" in fps_log
    assert "rank 0/2 (gloo, cpu): candidate rows [0, " in fps_log and "1 CPU thread" in fps_log
    for name in ("fps_curve.tsv", "selected_data.jsonl"):
        assert (wd / SEL / name).read_bytes() == (local / SEL / name).read_bytes(), name


def test_memory_kill_is_retried_as_new_job_with_more_memory(cluster, tmp_path):
    snakefile = HERE / "retry" / "Snakefile"
    dry = finish(
        snakemake(tmp_path, "-n", *SLURM_ARGS, "--config", "alloc_mb=1", env=cluster, snakefile=snakefile), tmp_path
    )
    first_mb = int(re.search(r"mem_mb=(\d+)", dry).group(1))
    alloc_mb = first_mb + first_mb // 10

    log = finish(
        snakemake(
            tmp_path,
            *SLURM_ARGS,
            "--retries",
            "1",
            "--config",
            f"alloc_mb={alloc_mb}",
            env=cluster,
            snakefile=snakefile,
        ),
        tmp_path,
    )

    jobs = slurm_jobs(log, cluster)
    assert [j["JobState"] for j in jobs] == ["FAILED", "COMPLETED"], jobs
    killed, retried = jobs
    assert killed["MinMemoryNode"] == f"{first_mb}M"
    assert int(retried["MinMemoryNode"].rstrip("M")) > alloc_mb
    slurm_log = Path(killed["StdOut"]).read_text()
    assert "exceeded memory limit" in slurm_log
    done = json.loads((tmp_path / "grown.json").read_text())
    assert done["attempt"] == 2 and done["held"] == alloc_mb * 2**20
    # Snakemake itself saw the retry as a second submission, not as the same job requeued
    assert re.findall(r"submitted with SLURM jobid (\d+)", log) == [killed["JobId"], retried["JobId"]]
