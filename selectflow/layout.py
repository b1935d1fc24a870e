"""Where a run's files live: every path under ``results/{run}/``, ``logs/{run}/`` and ``benchmarks/{run}/``.

:class:`Layout` is the one place these paths are spelled. The rules (``rules/*.smk``), the
workflow's final targets, the report's inputs and the end-of-run summary all build them
here. A file with a fixed name is an attribute (``Layout("demo").fps_curve`` is
``results/demo/selection/fps_curve.tsv``); a file of many is a method that gives a concrete
path when given its values and the rule's wildcard pattern when not:
``Layout("demo").router_shard("a", "shard_00000")`` is ``results/demo/router_data/a/shard_00000.h5``,
``Layout("demo").router_shard()`` is ``results/demo/router_data/{dataset}/{shard}.h5``. Paths
are strings with ``/``, as Snakemake matches them.

A job's log and its benchmark share one name (:meth:`Layout.log`, :meth:`Layout.benchmark`):
the report finds a job's benchmark at its log's relative path.

Imports nothing of selectflow, so config (the proxy model's folder) and every stage can use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

RESULTS_ROOT = "results"
LOGS_ROOT = "logs"
BENCHMARKS_ROOT = "benchmarks"


def demo_log(job: str) -> str:
    """The log of a demo job (rule demo_pool, demo_model): every run shares the demo, under ``logs/demo/``."""
    return f"{LOGS_ROOT}/demo/{job}.log"


def _id(value: int | str) -> str:
    """A window or group number as its file names write it (5 digits); a wildcard pattern unchanged."""
    return f"{value:05d}" if isinstance(value, int) else value


class _Result:
    """A fixed file or folder of a run's results: ``Layout.fps_curve = _Result("selection", "fps_curve.tsv")``."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, layout: Layout | None, owner: type) -> str | _Result:
        return self if layout is None else layout.result(*self.parts)


@dataclass(frozen=True)
class Layout:
    """The files of run ``run``, relative to ``root`` (the workflow's working folder; ``""``: as rules write them)."""

    run: str
    root: str | os.PathLike = ""

    def _under(self, top: str, *parts: str) -> str:
        root = os.fspath(self.root)
        return "/".join([root, top, self.run, *parts] if root else [top, self.run, *parts])

    def result(self, *parts: str) -> str:
        """``results/{run}/`` followed by ``parts``."""
        return self._under(RESULTS_ROOT, *parts)

    @property
    def logs(self) -> str:
        return self._under(LOGS_ROOT)

    @property
    def benchmarks(self) -> str:
        return self._under(BENCHMARKS_ROOT)

    def log(self, job: str) -> str:
        """The log of job ``job`` (a rule name, or ``folder/name`` for a job of many)."""
        return self._under(LOGS_ROOT, f"{job}.log")

    def benchmark(self, job: str) -> str:
        """The benchmark TSV of job ``job``, at its log's relative path."""
        return self._under(BENCHMARKS_ROOT, f"{job}.tsv")

    results = _Result()

    # data: split_dataset's shards, the pool's manifest, rule proxy_model's model (model.path: proxy)
    def shard_dir(self, dataset: str = "{dataset}") -> str:
        return self.result("shards", dataset)

    def shard(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        return self.result("shards", dataset, f"{shard}.jsonl")

    pool_manifest = _Result("pool_manifest.tsv")
    proxy_model = _Result("proxy_model")

    # router: router_dump writes each shard to router_store as it finishes (one group table per
    # job, named by its first shard); router_data links them; target_router routes selection.target
    router_store = _Result("router_store")

    def store_shard(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        return self.result("router_store", dataset, f"{shard}.h5")

    def store_group(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        return self.result("router_store", dataset, f"{shard}.group.tsv")

    router_data = _Result("router_data")
    router_data_table = _Result("router_data", "shards.tsv")

    def router_shard(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        return self.result("router_data", dataset, f"{shard}.h5")

    target_router = _Result("target", "router.h5")

    # warm-up
    warmup_converted = _Result("warmup", "converted")
    warmup_checkpoint = _Result("warmup", "checkpoint")
    warmup_metrics = _Result("warmup", "metrics.tsv")
    warmup_memory = _Result("warmup", "memory.tsv")

    # selection
    selection = _Result("selection")
    candidates_h5 = _Result("selection", "candidates.h5")
    candidates_quality = _Result("selection", "candidates_quality.tsv")
    distances = _Result("selection", "distances")

    def distance_block(self, i: int | str = "{i}", j: int | str = "{j}") -> str:
        return self.result("selection", "distances", f"block_{i}_{j}.h5")

    fps_curve = _Result("selection", "fps_curve.tsv")
    selected_data = _Result("selection", "selected_data.jsonl")
    selection_summary = _Result("selection", "selection_summary.tsv")
    quality = _Result("selection", "quality.tsv")

    @property
    def candidates_log(self) -> str:
        """Rule candidates' log (the summary reads the quality method from it)."""
        return self.log("selection/candidates")

    # fine-tune
    train_checkpoint = _Result("train", "checkpoint")
    train_metrics = _Result("train", "metrics.tsv")
    train_memory = _Result("train", "memory.tsv")

    # indexes: index_embed embeds a group of item windows, index_window builds one window
    # (``faiss``, ``ids.tsv``, ``json``)
    indexes = _Result("indexes")

    def index_dir(self, name: str = "{name}") -> str:
        return self.result("indexes", name)

    def index_embeddings(self, name: str = "{name}", group: int | str = "{g}") -> str:
        return self.result("indexes", name, "embeddings", f"group_{_id(group)}.h5")

    def index_window(self, name: str = "{name}", w: int | str = "{w}", ext: str = "faiss") -> str:
        return self.result("indexes", name, f"window_{_id(w)}.{ext}")

    def index_summary(self, name: str = "{name}") -> str:
        return self.result("indexes", name, "summary.tsv")

    neighbors = _Result("retrieve", "neighbors.tsv")
    contaminated = _Result("decontaminate", "contaminated.tsv")

    # report
    report = _Result("report")

    def report_figure(self, name: str) -> str:
        return self.result("report", f"{name}.png")

    # target compare: the test set (generated: test.jsonl, or held out of the pool), the student,
    # each method's picks, selection and eval (full_kept / full_raw: the full pools)
    compare_test = _Result("compare", "test.jsonl")
    compare_heldout = _Result("compare", "heldout.jsonl")
    compare_student = _Result("compare", "student")
    compare_candidates_h5 = _Result("compare", "candidates.h5")
    compare_candidates_quality = _Result("compare", "candidates_quality.tsv")
    compare_pool = _Result("compare", "pool.h5")
    compare_target_set = _Result("compare", "target_set", "dev.jsonl")
    compare_target_router = _Result("compare", "target_set", "router.h5")
    compare_intrinsic = _Result("compare", "intrinsic.tsv")
    compare_downstream = _Result("compare", "downstream.tsv")
    compare_figure = _Result("compare", "compare.png")
    compare_caption = _Result("compare", "caption.txt")

    def compare_picks(self, method: str = "{method}") -> str:
        return self.result("compare", method, "picks.tsv")

    def compare_selected(self, method: str = "{method}") -> str:
        return self.result("compare", method, "selected_data.jsonl")

    def compare_selection_summary(self, method: str = "{method}") -> str:
        return self.result("compare", method, "selection_summary.tsv")

    def compare_random_draw(self, i: int, method: str = "random") -> str:
        """A random baseline's draw for seed ``i`` > 0 (seed 0's is ``compare_selected(method)``)."""
        return self.result("compare", method, f"draw_{i}.jsonl")

    def compare_eval(self, method: str = "{method}") -> str:
        return self.result("compare", method, "eval.tsv")

    # what a run makes
    def stage_outputs(self, *, train: bool, warmup: bool, indexes: Sequence[str]) -> dict[str, list[str]]:
        """The files of the later stages a run makes, named as rule report_figures takes them.

        ``{"train": [metrics.tsv] or [], "warmup": [metrics.tsv] or [], "indexes": [summary.tsv
        of each name in indexes]}``: a stage the config leaves off has no file, so the report
        shows "stage not run" for it instead of forcing it to run.
        """
        return {
            "train": [self.train_metrics] if train else [],
            "warmup": [self.warmup_metrics] if warmup else [],
            "indexes": [self.index_summary(name) for name in indexes],
        }

    def final_targets(self, *, train: bool, indexes: Sequence[str]) -> list[str]:
        """What ``rule all`` asks for: the selection, its fine-tune (``train``), the summary of each
        index in ``indexes`` and, with any index, the selection's neighbours retrieved from the pool."""
        later = self.stage_outputs(train=train, warmup=False, indexes=indexes)
        return [
            self.selected_data,
            self.selection_summary,
            *later["train"],
            *later["indexes"],
            *([self.neighbors] if indexes else []),
        ]
