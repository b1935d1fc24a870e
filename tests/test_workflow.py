"""End-to-end through Snakemake on a small demo config: outputs, partial reruns, SIGKILL."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selectflow.routerfile import read_router_shard
from selectflow.select import n_blocks

from .workflow import REPO, config_variant, ran_jobs, snakemake

pytestmark = pytest.mark.slow
SEL = "results/small/selection"
README_COMMAND = ("--cores", "1", "--resources", "gpu=1")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("clean")
    snakemake(wd, "--cores", "2", "--resources", "gpu=1")
    return wd


def test_chain_outputs(clean_run):
    shards = sorted((clean_run / "results/small/router_data/demo").glob("*.h5"))
    assert [p.name for p in shards] == [f"shard_{k:05d}.h5" for k in range(4)]
    assert sum(len(read_router_shard(p)) for p in shards) == 240
    logs = (clean_run / "logs/small/router_dump/demo/shard_00000.log").read_text()
    assert "router dump: 100%" in logs and "rule router_dump done" in logs
    assert (clean_run / "benchmarks/small/router_dump/demo/shard_00000.tsv").is_file()
    lines = (clean_run / SEL / "selected_data.jsonl").read_text().splitlines()
    assert len(lines) == 24  # 10% of 240
    # quality.tsv, written after FPS, gives every pool sample its final reason
    picked = {json.loads(line)["sample_id"] for line in lines}
    reason = reasons(clean_run / SEL / "quality.tsv")
    assert len(reason) == 240 and {s for s, r in reason.items() if r == "selected"} == picked
    assert "not_picked" in reason.values() and "candidate" not in reason.values()
    # the candidates rule's table, before FPS, names the same samples as candidates
    before = reasons(clean_run / SEL / "candidates_quality.tsv")
    assert {s for s, r in before.items() if r == "candidate"} == {s for s, r in reason.items() if r in ("selected", "not_picked")}


def reasons(tsv: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    return {r[rows[0].index("sample_id")]: r[rows[0].index("reason")] for r in rows[1:]}


def test_deleted_shard_is_recomputed_alone(clean_run, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    shards = sorted((wd / "results/small/router_data/demo").glob("*.h5"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[2].unlink()
    proc = snakemake(wd, "router_data", *README_COMMAND)
    assert ran_jobs(proc).count("router_dump") == 1
    after = {p.name: p.stat().st_mtime_ns for p in sorted(shards[0].parent.glob("*.h5"))}
    assert [name for name in after if after[name] != before[name]] == [shards[2].name]


def test_matrix_mode_picks_like_streaming(clean_run, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    proc = snakemake(wd, *README_COMMAND, config=config_variant("small", tmp_path, selection={"distance_mode": "matrix"}))
    assert "distance_block" in ran_jobs(proc) and "router_dump" not in ran_jobs(proc)
    n = n_blocks(wd / SEL / "candidates.h5", 50)
    assert n >= 2 and len(list((wd / SEL / "distances").glob("block_*.h5"))) == n * (n + 1) // 2
    assert (wd / SEL / "selected_data.jsonl").read_bytes() == (clean_run / SEL / "selected_data.jsonl").read_bytes()


def kill_when(workdir: Path, ready, config, timeout: float = 600) -> None:
    """Start the workflow in its own process group and SIGKILL the whole group once ``ready()``."""
    cmd = [sys.executable, "-m", "snakemake", *README_COMMAND, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "workflow ended before the kill point"
            assert time.time() < deadline, "kill point not reached"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("point, mode", [
    ("router_dump", "streaming"),
    ("distance_block", "matrix"),
    ("fps", "streaming"),
    ("train", "streaming"),
])
def test_sigkill_then_rerun_only_finishes_what_was_missing(clean_run, tmp_path, point, mode):
    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copytree(clean_run / "resources", wd / "resources")  # the demo inputs are not under test here
    # a longer training run leaves a wide window between its first save (step 3) and its end
    train = {"max_steps": 40} if point == "train" else {}
    config = config_variant("small", tmp_path, selection={"distance_mode": mode}, train=train)
    shards = wd / "results/small/router_data/demo"
    blocks = wd / SEL / "distances"
    ready = {
        "router_dump": lambda: len(list(shards.glob("*.h5"))) >= 2,
        "distance_block": lambda: len(list(blocks.glob("block_*.h5"))) >= 1,
        "fps": lambda: (wd / "logs/small/selection/fps.log").exists(),
        "train": lambda: any((wd / "results/small/train/resume").glob("*")),
    }[point]
    kill_when(wd, ready, config)
    done_before = {p: p.stat().st_mtime_ns for p in wd.glob("results/**/*.h5")}
    proc = snakemake(wd, *README_COMMAND, config=config)
    jobs = ran_jobs(proc)
    # finished outputs were kept, not recomputed
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())
    assert jobs.count("router_dump") == 4 - len([p for p in done_before if p.parent == shards])
    assert (wd / SEL / "selected_data.jsonl").read_bytes() == (clean_run / SEL / "selected_data.jsonl").read_bytes()
    if point == "train":
        summary = json.loads((wd / "results/small/train/summary.json").read_text())
        assert summary["resumed_from_step"] > 0
        # the same training, uninterrupted, ends with byte-identical weights
        ref = tmp_path / "ref"
        shutil.copytree(wd, ref, symlinks=True)
        shutil.rmtree(ref / "results/small/train")
        proc = snakemake(ref, *README_COMMAND, config=config)
        assert "train" in ran_jobs(proc) and "router_dump" not in ran_jobs(proc)
        name = "model.safetensors"
        assert (wd / "results/small/train/checkpoint" / name).read_bytes() == (
            ref / "results/small/train/checkpoint" / name).read_bytes()
