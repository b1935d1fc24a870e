"""End-to-end: the workflow on a small demo config, through Snakemake, and partial reruns."""

from pathlib import Path

import pytest

from selectflow.routerfile import read_router_shard

from .workflow import ran_jobs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf")
    snakemake(wd, "router_data", "--cores", "2", "--resources", "gpu=1")
    return wd


def test_router_data_written(workdir):
    shards = sorted((workdir / "results/small/router_data/demo").glob("*.h5"))
    assert [p.name for p in shards] == [f"shard_{k:05d}.h5" for k in range(4)]
    total = sum(len(read_router_shard(p)) for p in shards)
    assert total == 240
    logs = (workdir / "logs/small/router_dump/demo/shard_00000.log").read_text()
    assert "router dump: 100%" in logs and "rule router_dump done" in logs
    assert (workdir / "benchmarks/small/router_dump/demo/shard_00000.tsv").is_file()


def test_deleted_shard_is_recomputed_alone(workdir):
    shards = sorted((workdir / "results/small/router_data/demo").glob("*.h5"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[2].unlink()
    proc = snakemake(workdir, "router_data", "--cores", "2", "--resources", "gpu=1")
    assert ran_jobs(proc).count("router_dump") == 1
    after = {p.name: p.stat().st_mtime_ns for p in sorted(shards[0].parent.glob("*.h5"))}
    assert after.keys() == before.keys()
    changed = [name for name in after if after[name] != before[name]]
    assert changed == [shards[2].name]
