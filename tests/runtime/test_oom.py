"""OOM resilience with real faults: a real RLIMIT_AS cap, real retries through Snakemake."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.errors import CorruptFileError
from tests.workflow import config_variant, snakemake

pytestmark = pytest.mark.slow
SHARD = "results/oom/router_data/demo/shard_00000.h5"
LOG = "logs/oom/router_dump/demo/shard_00000.log"


@pytest.fixture(scope="module")
def unconstrained(tmp_path_factory) -> Path:
    """The same dump with no memory cap (batch 1024 in one attempt)."""
    wd = tmp_path_factory.mktemp("free")
    snakemake(wd, "router_data", "--cores", "1", config=config_variant("oom", wd, retry={"job_memory_budget_mb": None}))
    assert "attempt 1, batch_size=1024" in (wd / LOG).read_text()
    return wd


def prepared(tmp_path, unconstrained) -> Path:
    """A work folder with the demo inputs and shards already built (only the dump runs)."""
    for sub in ("resources", "results/oom/shards"):
        shutil.copytree(unconstrained / sub, tmp_path / sub)
    return tmp_path


def test_oom_fails_attempt_1_and_retry_succeeds_with_smaller_batch(tmp_path, unconstrained):
    wd = prepared(tmp_path, unconstrained)
    proc = snakemake(wd, "router_data", "--cores", "1", config="oom")
    log, console = (wd / LOG).read_text(), proc.stdout + proc.stderr
    # what the user sees on the console, then in the log of the attempt that succeeded
    assert "OUT OF MEMORY in rule router_dump (attempt 1)" in console
    assert "batch_size=1024; next attempt uses batch_size=128" in console
    assert "Trying to restart job" in console
    assert "attempt 1 failed with: RuntimeError" in log and "can't allocate memory" in log
    assert "attempt 2, batch_size=128" in log and "rule router_dump done" in log
    got, ref = read_router_shard(wd / SHARD), read_router_shard(unconstrained / SHARD)
    assert list(got.sample_id) == list(ref.sample_id)
    # batch 128 vs 1024 pads to other widths: float32 sums differ in the last bits only
    np.testing.assert_allclose(got.moe_probs, ref.moe_probs, atol=1e-6)
    np.testing.assert_allclose(got.nll_response, ref.nll_response, rtol=1e-5)


def test_adaptive_chunks_survive_the_same_cap_without_a_retry(tmp_path, unconstrained):
    wd = prepared(tmp_path, unconstrained)
    proc = snakemake(
        wd, "router_data", "--cores", "1", config=config_variant("oom", wd, retry={"adaptive_chunks": True})
    )
    log = (wd / LOG).read_text()
    assert "out of memory on router-dump batch" in log and "retrying with 512" in log
    assert "attempt 2" not in log and "Trying to restart job" not in proc.stdout + proc.stderr
    np.testing.assert_allclose(
        read_router_shard(wd / SHARD).moe_probs, read_router_shard(unconstrained / SHARD).moe_probs, atol=1e-6
    )


def test_non_oom_failure_is_not_retried_smaller(tmp_path, unconstrained):
    wd = prepared(tmp_path, unconstrained)
    (wd / "resources/demo/model/config.json").write_text('{"model_type": "no_such_architecture"}')
    proc = snakemake(wd, "router_data", "--cores", "1", config="oom", check=False)
    assert proc.returncode != 0
    log = (wd / LOG).read_text()
    assert "not an out-of-memory error" in log
    # the cause is shown once (attempt 1), not again by each skipped attempt; its record stays beside the log
    assert "no_such_architecture" not in log
    assert "no_such_architecture" in (wd / f"{LOG}.failure.json").read_text()
    first, *retries = proc.stderr.split("Trying to restart job")
    assert "no_such_architecture" in first and retries
    assert not any("no_such_architecture" in later for later in retries)
    # Snakemake keeps the log of the last attempt (3, batch 16): it stopped before any work
    assert "rule router_dump, attempt 3, batch_size=16" in log
    assert "attempt 3 of rule router_dump skipped: attempt 1 failed with" in log
    assert "Loading weights" not in log and "router dump:" not in log
    assert not (wd / SHARD).exists()


def test_truncated_shard_is_rejected_with_the_rule_that_rebuilds_it(tmp_path, unconstrained):
    data = (unconstrained / SHARD).read_bytes()
    bad = tmp_path / "shard.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=f"{bad}.*router_dump rebuilds it"):
        read_router_shard(bad)
