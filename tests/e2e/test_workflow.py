"""End-to-end through Snakemake on a small demo config: outputs, partial reruns, SIGKILL."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from selectflow.router.routerfile import read_router_shard
from selectflow.select.candidates import n_blocks
from tests.workflow import config_variant, ran_jobs, snakemake, snakemake_command

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
    # one router_dump job (shards_per_job 8 >= 4 shards), named by its first shard, one model load
    logs = (clean_run / "logs/small/router_dump/demo/shard_00000.log").read_text()
    assert "router dump: 100%" in logs and "rule router_dump done" in logs
    assert [f"shard {k}/4 done" in logs for k in range(1, 5)] == [True] * 4
    assert logs.count("routers via") == 1  # the capture line of a model load: once
    assert not (clean_run / "logs/small/router_dump/demo/shard_00001.log").exists()
    assert (clean_run / "benchmarks/small/router_dump/demo/shard_00000.tsv").is_file()
    # each router_data file is a hard link to its store file, not a copy
    store = clean_run / "results/small/router_store/demo"
    assert all(p.stat().st_ino == (store / p.name).stat().st_ino for p in shards)
    lines = (clean_run / SEL / "selected_data.jsonl").read_text().splitlines()
    assert len(lines) == 24  # 10% of 240
    # quality.tsv, written after FPS, gives every pool sample its final reason
    picked = {json.loads(line)["sample_id"] for line in lines}
    reason = reasons(clean_run / SEL / "quality.tsv")
    assert len(reason) == 240 and {s for s, r in reason.items() if r == "selected"} == picked
    assert "not_picked" in reason.values() and "candidate" not in reason.values()
    # the candidates rule's table, before FPS, names the same samples as candidates
    before = reasons(clean_run / SEL / "candidates_quality.tsv")
    assert {s for s, r in before.items() if r == "candidate"} == {
        s for s, r in reason.items() if r in ("selected", "not_picked")
    }


def reasons(tsv: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    return {r[rows[0].index("sample_id")]: r[rows[0].index("reason")] for r in rows[1:]}


def test_deleted_shard_is_recomputed_alone(clean_run, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    shards = sorted((wd / "results/small/router_data/demo").glob("*.h5"))
    store = wd / "results/small/router_store/demo"
    # an atomic rewrite makes a new inode; a reused store file keeps its inode
    before = {p.name: p.stat().st_ino for p in sorted(store.glob("*.h5"))}
    original = shards[2].read_bytes()
    # a deleted router_data file stops the run with what to do; -R router_data links it again from the
    # store: no router_dump job, no model load
    shards[2].unlink()
    proc = snakemake(wd, *README_COMMAND, check=False)
    assert proc.returncode != 0 and f"{shards[2].name} is missing" in proc.stderr and "-R router_data" in proc.stderr
    proc = snakemake(wd, "router_data", "-R", "router_data", *README_COMMAND)
    assert "router_data" in ran_jobs(proc) and "router_dump" not in ran_jobs(proc)
    assert {p.name: p.stat().st_ino for p in sorted(store.glob("*.h5"))} == before
    assert shards[2].read_bytes() == original and shards[2].stat().st_ino == before[shards[2].name]
    # deleted in the store too, with its group table: that shard alone is dumped again, the group's others reused
    shards[2].unlink()
    (store / shards[2].name).unlink()
    (store / "shard_00000.group.tsv").unlink()
    proc = snakemake(wd, "router_data", "-R", "router_data", *README_COMMAND)
    assert ran_jobs(proc).count("router_dump") == 1
    log = (wd / "logs/small/router_dump/demo/shard_00000.log").read_text()
    assert log.count(": reusing ") == 3 and log.count(": dumping ") == 1
    after = {p.name: p.stat().st_ino for p in sorted(store.glob("*.h5"))}
    assert [name for name in after if after[name] != before[name]] == [shards[2].name]
    assert shards[2].read_bytes() == original and shards[2].stat().st_ino == after[shards[2].name]


@pytest.mark.parametrize(
    ("change", "first"),
    [({"warmup": {"train": {"max_steps": 4}}}, "warmup"), ({"router_dump": {"max_length": 96}}, "router_dump")],
)
def test_a_changed_model_or_dump_setting_reruns_the_dump_and_the_selection(clean_run, tmp_path, change, first):
    # the router-data shards are no rule's output: without the checkpoint's table as an input of
    # the rules that read them, a changed warm-up or dump setting reran the warm-up (or nothing)
    # and left the selection on the old routing
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    assert "Nothing to be done" in snakemake(wd, "-n", *README_COMMAND).stdout
    section, value = next(iter(change.items()))
    variant = config_variant("small", tmp_path, **{section: value})
    planned = ran_jobs(snakemake(wd, "-n", *README_COMMAND, config=variant))
    assert planned[0] == first
    assert {"router_dump", "router_data", "candidates"} <= set(planned)


def test_a_changed_fps_setting_reruns_fps_and_not_the_candidates(clean_run, tmp_path):
    # the candidates rule takes the selection section without the FPS-only keys (config.param_before_fps)
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    variant = config_variant("small", tmp_path, selection={"fps_snap": "density", "fps_log_interval": 7})
    planned = ran_jobs(snakemake(wd, "-n", *README_COMMAND, config=variant))
    assert "fps" in planned and "candidates" not in planned and "router_dump" not in planned, planned


def test_length_matched_baselines_draw_fps_lengths_anew_and_follow_its_picks(clean_run, tmp_path):
    import numpy as np

    from selectflow.data.records import iter_jsonl
    from selectflow.report.yardstick import read_pool
    from selectflow.select.baselines import length_bins, nearest_length_pick

    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    out = wd / "results/small/compare"
    compare = {"methods": ["random_length", "random_matched"], "seeds": 3, "full_pools": []}
    names = ("selected_data.jsonl", "draw_1.jsonl", "draw_2.jsonl")
    targets = {m: [f"results/small/compare/{m}/{name}" for name in names] for m in compare["methods"]}
    every = [t for ts in targets.values() for t in ts]
    jobs = ran_jobs(snakemake(wd, *every, *README_COMMAND, config=config_variant("small", tmp_path, compare=compare)))
    assert {"compare_fps", "compare_baseline", "compare_random_draws"} <= set(jobs), jobs
    pool = read_pool(out / "pool.h5")
    bins = dict(zip(pool["sample_id"], length_bins(pool["response_tokens"])))

    def profile(ids):
        return sorted(bins[s] for s in ids)

    fps = [ln.split("\t")[1] for ln in (out / "fps/picks.tsv").read_text().splitlines()[1:]]
    drawn = {m: [{rec["sample_id"] for _, rec in iter_jsonl(wd / t)} for t in ts] for m, ts in targets.items()}
    assert all(profile(d) == profile(fps) for d in drawn["random_length"])
    # random_matched: seed j's draw is nearest_length_pick of fps's rows with compare.seed + j
    row = {s: i for i, s in enumerate(pool["sample_id"])}
    reference = np.array([row[s] for s in fps])
    for j, d in enumerate(drawn["random_matched"]):
        assert d == set(pool["sample_id"][nearest_length_pick(pool["response_tokens"], reference, j)])
    assert all(len({frozenset(d) for d in ds}) == 3 for ds in drawn.values())  # anew for every seed
    # a changed FPS setting reruns fps and redraws both, not the comparison's pool
    variant = config_variant("small", tmp_path, compare=compare, selection={"fps_snap": "density"})
    planned = ran_jobs(snakemake(wd, "-n", *every, *README_COMMAND, config=variant))
    assert planned.count("compare_baseline") == planned.count("compare_random_draws") == 2, planned
    assert "compare_fps" in planned and "compare_pool" not in planned and "compare_candidates" not in planned, planned


def test_matrix_mode_picks_like_streaming(clean_run, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    proc = snakemake(
        wd, *README_COMMAND, config=config_variant("small", tmp_path, selection={"distance_mode": "matrix"})
    )
    assert "distance_block" in ran_jobs(proc) and "router_dump" not in ran_jobs(proc)
    n = n_blocks(wd / SEL / "candidates.h5", 50)
    assert n >= 2 and len(list((wd / SEL / "distances").glob("block_*.h5"))) == n * (n + 1) // 2
    assert (wd / SEL / "selected_data.jsonl").read_bytes() == (clean_run / SEL / "selected_data.jsonl").read_bytes()


def test_fps_on_two_ranks_writes_the_same_curve(clean_run, tmp_path):
    # selection.fps_gpus: 2 on a CPU box: rule fps asks for gpu=2 and runs two gloo ranks under torchrun
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    config = config_variant("small", tmp_path, selection={"fps_gpus": 2})
    # no file deleted: the changed selection section alone (a rule param) makes Snakemake rerun fps
    proc = snakemake(wd, f"{SEL}/fps_curve.tsv", "--cores", "2", "--resources", "gpu=2", config=config)
    assert "fps" in ran_jobs(proc) and "router_dump" not in ran_jobs(proc)
    assert "rank 0/2 (gloo, cpu)" in (wd / "logs/small/selection/fps.log").read_text()
    assert (wd / SEL / "fps_curve.tsv").read_bytes() == (clean_run / SEL / "fps_curve.tsv").read_bytes()


def kill_when(workdir: Path, ready, config, timeout: float = 600, poll: float = 0.2) -> None:
    """Start the workflow in its own process group and SIGKILL the whole group once ``ready()``."""
    cmd = snakemake_command(workdir, *README_COMMAND, config=Path(config))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "workflow ended before the kill point"
            assert time.time() < deadline, "kill point not reached"
            time.sleep(poll)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize(
    "point, mode",
    [
        ("router_dump", "streaming"),
        ("distance_block", "matrix"),
        ("fps", "streaming"),
        ("train", "streaming"),
    ],
)
def test_sigkill_then_rerun_only_finishes_what_was_missing(clean_run, tmp_path, point, mode):
    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copytree(clean_run / "resources", wd / "resources")  # the demo inputs are not under test here
    # a longer training run leaves a wide window between its first save (step 3) and its end
    train = {"max_steps": 40} if point == "train" else {}
    config = config_variant("small", tmp_path, selection={"distance_mode": mode}, train=train)
    shards = wd / "results/small/router_data/demo"
    blocks = wd / SEL / "distances"
    store = wd / "results/small/router_store/demo"
    ready = {
        # the group job (all 4 shards) killed after its first shard is stored
        "router_dump": lambda: len(list(store.glob("shard_*.h5"))) >= 1,
        "distance_block": lambda: len(list(blocks.glob("block_*.h5"))) >= 1,
        "fps": lambda: (wd / "logs/small/selection/fps.log").exists(),
        "train": lambda: any((wd / "results/small/train/resume").glob("*")),
    }[point]
    kill_when(wd, ready, config, poll=0.02 if point == "router_dump" else 0.2)
    # Snakemake touches the router_data hard links when it (re)links them, which touches the
    # store file too: those are compared by inode (an atomic rewrite makes a new one)
    linked = (shards, store)
    done_before = {
        p: p.stat().st_ino if p.parent in linked else p.stat().st_mtime_ns for p in wd.glob("results/**/[!.]*.h5")
    }
    stored = [p for p in done_before if p.parent == store]
    if point == "router_dump":
        assert 1 <= len(stored) < 4, "the kill did not land inside the group job"
    proc = snakemake(wd, *README_COMMAND, config=config)
    jobs = ran_jobs(proc)
    # finished outputs were kept, not recomputed
    assert all((p.stat().st_ino if p.parent in linked else p.stat().st_mtime_ns) == t for p, t in done_before.items())
    assert jobs.count("router_dump") == (len(stored) < 4)
    if point == "router_dump":
        log = (wd / "logs/small/router_dump/demo/shard_00000.log").read_text()
        assert log.count(": reusing ") == len(stored) and log.count(": dumping ") == 4 - len(stored)
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
            ref / "results/small/train/checkpoint" / name
        ).read_bytes()


def test_fps_draws_rebuild_fps_with_the_next_strata_seeds_and_rerun_nothing_before_them(clean_run, tmp_path):
    # compare.fps_draws: fine-tuning seed i trains on fps's selection with selection.strata_seed + i; draw i
    # is the selection compare's fps makes when a user sets strata_seed i. Every kept sample a candidate, as
    # by default: the draws take the comparison's candidates and draw their strata anew (no pool scan)
    every = {"importance_selection_percentage": None}
    wd = tmp_path / "wd"
    shutil.copytree(clean_run, wd, symlinks=True)
    out = wd / "results/small/compare/fps"
    compare = {"methods": ["random", "random_length"], "seeds": 3, "full_pools": [], "fps_draws": True}
    draws = [f"results/small/compare/fps/{name}" for name in ("selected_data.jsonl", "draw_1.jsonl", "draw_2.jsonl")]
    (tmp_path / "on").mkdir()
    on = config_variant("small", tmp_path / "on", compare=compare, selection=every)
    jobs = ran_jobs(snakemake(wd, *draws, "results/small/compare/random/draw_1.jsonl", *README_COMMAND, config=on))
    assert jobs.count("compare_fps_draw") == 2 and "compare_fps" in jobs, jobs
    assert "candidates with their strata drawn anew" in (wd / "logs/small/compare/fps_draw_1.log").read_text()
    picked = [[rec["sample_id"] for rec in map(json.loads, (wd / d).read_text().splitlines())] for d in draws]
    assert len({len(p) for p in picked}) == 1 and all(len(set(p)) == len(p) for p in picked)
    assert len({frozenset(p) for p in picked}) == 3, "the strata seed changes the picks on this pool"
    for i in (1, 2):
        (tmp_path / f"seed{i}").mkdir()
        seeded = config_variant("small", tmp_path / f"seed{i}", compare=compare, selection={**every, "strata_seed": i})
        snakemake(wd, draws[0], *README_COMMAND, config=seeded)
        assert (out / "selected_data.jsonl").read_text().splitlines() == (wd / draws[i]).read_text().splitlines()
    # back to seed 0; turning fps_draws off reruns nothing before fps's fine-tunes (param_of_compare)
    snakemake(wd, draws[0], *README_COMMAND, config=on)
    (tmp_path / "off").mkdir()
    off = config_variant("small", tmp_path / "off", compare={**compare, "fps_draws": False}, selection=every)
    targets = (draws[0], "results/small/compare/random/draw_1.jsonl")
    assert "Nothing to be done" in snakemake(wd, "-n", *targets, *README_COMMAND, config=off).stdout
    # and fps's fine-tunes train on the three draws with it, on its one selection without it; random_length's
    # draws 1, 2 match fps's draws 1, 2 with it (each seed's fps selection), its draw 0 without it
    matched = ["results/small/compare/fps/picks.tsv", *draws[1:]]
    for config, trained_on, length_of in ((on, draws, matched), (off, draws[:1], matched[:1])):
        dag = snakemake(wd, "-n", "results/small/compare/fps/eval.tsv", *README_COMMAND, config=config).stdout
        block = dag[dag.index("rule compare_finetune:") :]
        inputs = block[block.index("input:") : block.index("output:")]
        assert [p for p in inputs.replace(",", " ").split() if "/compare/fps/" in p] == trained_on, inputs
        target = "results/small/compare/random_length/draw_1.jsonl"
        dag = snakemake(wd, "-n", "--forcerun", "compare_random_draws", target, *README_COMMAND, config=config).stdout
        block = dag[dag.index("rule compare_random_draws:") :]
        inputs = block[block.index("input:") : block.index("output:")]
        assert [p for p in inputs.replace(",", " ").split() if "/compare/fps/" in p] == length_of, inputs
