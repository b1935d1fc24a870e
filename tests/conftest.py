"""Shared fixtures: the demo pool and the tiny demo MoE model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from selectflow.data.demo import build_proxy_model, write_demo_pool

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_pool(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "demo_pool.jsonl"
    write_demo_pool(path, n_records=300, seed=0)
    return path


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory, demo_pool) -> Path:
    out = tmp_path_factory.mktemp("model") / "model"
    return build_proxy_model(out, demo_pool, seed=0, vocab_size=512, n_layers=2, hidden=32, pretrain_epochs=0)
