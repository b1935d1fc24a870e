"""Rule-level glue of the data stage (rules/data.smk): the demo pool and model, the proxy
model, the dataset shards.

Each function is one rule's job: paths and a config section in, files written atomically by
the pure modules :mod:`selectflow.data.records` and :mod:`selectflow.data.demo`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace

from selectflow.config import DemoConfig, ProxyConfig
from selectflow.data.demo import build_proxy_model, write_demo_pool
from selectflow.data.records import split_into_shards


def demo_pool(out_jsonl: str | os.PathLike, n_records: int, seed: int) -> None:
    """Rule ``demo_pool``: the deterministic demo instruction pool (``demo.n_records``, ``demo.seed``).

    Plain values, not the ``demo`` section: the rule's params are these two keys alone, so a
    change of ``demo.pretrain_epochs`` rebuilds the model but not the pool.
    """
    write_demo_pool(out_jsonl, n_records, seed)


def demo_model(pool_jsonl: str | os.PathLike, out_dir: str | os.PathLike, demo: DemoConfig, proxy: ProxyConfig) -> None:
    """Rule ``demo_model``: the proxy of the demo pool (shape and pre-training: ``proxy``), seeded by ``demo.seed``."""
    proxy_model([pool_jsonl], out_dir, replace(proxy, seed=demo.seed))


def proxy_model(pools: list[str | os.PathLike], out_dir: str | os.PathLike, cfg: ProxyConfig) -> None:
    """Rule ``proxy_model``: the tiny MoE model and tokenizer of the datasets ``pools`` (``model.path: proxy``)."""
    build_proxy_model(out_dir, pools, **asdict(cfg))


def split_dataset(dataset_path: str | os.PathLike, dataset: str, out_dir: str | os.PathLike, shard_size: int) -> None:
    """Checkpoint ``split_dataset``: one dataset → ``out_dir/shard_XXXXX.jsonl`` of ``shard_size`` records."""
    split_into_shards(dataset_path, dataset, out_dir, shard_size)
