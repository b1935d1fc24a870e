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
