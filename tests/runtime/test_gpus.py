"""GPU assignment: freest device first, one job per device (real flock locks), gpu_id forces."""

import os

import pytest

from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.gpus import claim_gpu


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)


def test_freest_unclaimed_device_first(tmp_path):
    free = {0: 1000, 1: 70000, 2: 30000}

    def job():
        # each job is a fresh process: nothing set CUDA_VISIBLE_DEVICES before it
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        return claim_gpu(tmp_path, free=free)

    a = job()
    assert a.index == 1 and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    b, c = job(), job()
    assert (b.index, c.index) == (2, 0)
    with pytest.raises(SelectFlowError, match="all GPUs .* are held"):
        job()
    b.release()
    assert job().index == 2
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_gpu_id_forces_a_device(tmp_path):
    assert claim_gpu(tmp_path, gpu_id=0, free={0: 10, 1: 99999}).index == 0
    with pytest.raises(SelectFlowError, match="gpu_id 5 does not exist"):
        claim_gpu(tmp_path, gpu_id=5, free={0: 10})


def test_user_settings_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    claim = claim_gpu(tmp_path, free={0: 1, 3: 2})
    assert claim.index is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


def test_no_gpu_is_a_no_op(tmp_path):
    assert claim_gpu(tmp_path, free={}).index is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpu_rules_are_read_from_the_rules_resources(tmp_path):
    from selectflow.runtime.gpus import gpu_rules

    (tmp_path / "a.smk").write_text(
        "rule cpu_only:\n    resources:\n        mem_mb=100,\n    script:\n        'x.py'\n\n\n"
        "rule on_gpu:\n    input:\n        'gpu=1',\n    resources:\n        gpu=1,\n        attempt=f,\n\n\n"
        "def helper():\n    gpu = 1\n\n\n"
        "checkpoint maybe:\n    resources:\n        gpu=lambda wc: int(wc.x == 'y'),\n\n\n"
        "rule zero:\n    resources:\n        gpu=0,\n"
    )
    assert gpu_rules(tmp_path) == ["maybe", "on_gpu"]


def test_slurm_profile_asks_a_gpu_for_every_rule_that_declares_one(monkeypatch):
    import re

    import yte

    from selectflow.runtime.gpus import gpu_rules
    from tests.workflow import REPO

    RULES_DIR = REPO / "rules"
    monkeypatch.chdir(REPO)  # the profile reads rules/ where Snakemake runs: the workflow's root

    block = re.compile(r"^(?:rule|checkpoint) (\w+):\n(?:    .*\n|\n)*?        gpu=(?!0,)", re.M)
    declared = {m.group(1) for path in RULES_DIR.glob("*.smk") for m in block.finditer(path.read_text())}
    assert {"router_dump", "train", "warmup", "fps", "index_window"} <= declared
    profile = yte.process_yaml(open(RULES_DIR.parent / "profiles" / "slurm" / "config.yaml"))
    big = {rule for rule, res in profile["set-resources"].items() if res["mem_mb"].startswith("min(16000")}
    assert big == declared == set(gpu_rules(RULES_DIR))
