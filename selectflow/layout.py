"""Where a run's files live: every path under ``results/{run}/``, ``logs/{run}/`` and ``benchmarks/{run}/``.

:class:`Layout` is the one place these paths are spelled. The rules (``rules/*.smk``), the
workflow's final targets, the report's inputs and the end-of-run summary all build them
here. Each method gives a concrete path when given its values and the rule's wildcard
pattern when not: ``Layout("demo").router_shard("a", "shard_00000")`` is
``results/demo/router_data/a/shard_00000.h5``, ``Layout("demo").router_shard()`` is
``results/demo/router_data/{dataset}/{shard}.h5``. Paths are strings with ``/``, as Snakemake
matches them.

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


@dataclass(frozen=True)
class Layout:
    """The files of run ``run``, relative to ``root`` (the workflow's working folder; ``""``: as rules write them)."""

    run: str
    root: str | os.PathLike = ""

    def _under(self, top: str, *parts: str) -> str:
        root = os.fspath(self.root)
        return "/".join([root, top, self.run, *parts] if root else [top, self.run, *parts])

    @property
    def results(self) -> str:
        return self._under(RESULTS_ROOT)

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

    def _file(self, *parts: str) -> str:
        return self._under(RESULTS_ROOT, *parts)

    # data
    def shard_dir(self, dataset: str = "{dataset}") -> str:
        """Checkpoint split_dataset's folder of one dataset's JSONL shards."""
        return self._file("shards", dataset)

    def shard(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        return self._file("shards", dataset, f"{shard}.jsonl")

    @property
    def pool_manifest(self) -> str:
        return self._file("pool_manifest.tsv")

    @property
    def proxy_model(self) -> str:
        """Rule proxy_model's model folder (``model.path: proxy``)."""
        return self._file("proxy_model")

    # router
    @property
    def router_store(self) -> str:
        """Where router_dump writes each shard as it finishes (router_data links them from here)."""
        return self._file("router_store")

    def store_shard(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        return self._file("router_store", dataset, f"{shard}.h5")

    def store_group(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        """The group table of the router_dump job named by its first shard ``shard``."""
        return self._file("router_store", dataset, f"{shard}.group.tsv")

    @property
    def router_data(self) -> str:
        return self._file("router_data")

    @property
    def router_data_table(self) -> str:
        return self._file("router_data", "shards.tsv")

    def router_shard(self, dataset: str = "{dataset}", shard: str = "{shard}") -> str:
        return self._file("router_data", dataset, f"{shard}.h5")

    @property
    def target_router(self) -> str:
        return self._file("target", "router.h5")

    # warm-up
    @property
    def warmup_converted(self) -> str:
        return self._file("warmup", "converted")

    @property
    def warmup_checkpoint(self) -> str:
        return self._file("warmup", "checkpoint")

    @property
    def warmup_metrics(self) -> str:
        return self._file("warmup", "metrics.tsv")

    @property
    def warmup_memory(self) -> str:
        return self._file("warmup", "memory.tsv")

    # selection
    @property
    def selection(self) -> str:
        return self._file("selection")

    @property
    def candidates_h5(self) -> str:
        return self._file("selection", "candidates.h5")

    @property
    def candidates_quality(self) -> str:
        return self._file("selection", "candidates_quality.tsv")

    @property
    def candidates_log(self) -> str:
        """Rule candidates' log (the summary reads the quality method from it)."""
        return self.log("selection/candidates")

    @property
    def distances(self) -> str:
        return self._file("selection", "distances")

    def distance_block(self, i: int | str = "{i}", j: int | str = "{j}") -> str:
        return self._file("selection", "distances", f"block_{i}_{j}.h5")

    @property
    def fps_curve(self) -> str:
        return self._file("selection", "fps_curve.tsv")

    @property
    def selected_data(self) -> str:
        return self._file("selection", "selected_data.jsonl")

    @property
    def selection_summary(self) -> str:
        return self._file("selection", "selection_summary.tsv")

    @property
    def quality(self) -> str:
        return self._file("selection", "quality.tsv")

    # fine-tune
    @property
    def train_checkpoint(self) -> str:
        return self._file("train", "checkpoint")

    @property
    def train_metrics(self) -> str:
        return self._file("train", "metrics.tsv")

    @property
    def train_memory(self) -> str:
        return self._file("train", "memory.tsv")

    # indexes
    @property
    def indexes(self) -> str:
        return self._file("indexes")

    def index_dir(self, name: str = "{name}") -> str:
        return self._file("indexes", name)

    def index_embeddings(self, name: str = "{name}", group: int | str = "{g}") -> str:
        """The vectors of one index_embed job's group of item windows."""
        return self._file("indexes", name, "embeddings", f"group_{_id(group)}.h5")

    def index_window(self, name: str = "{name}", w: int | str = "{w}", ext: str = "faiss") -> str:
        """One window of index ``name``: ``ext`` ``faiss`` (the index), ``ids.tsv`` or ``json`` (its metadata)."""
        return self._file("indexes", name, f"window_{_id(w)}.{ext}")

    def index_summary(self, name: str = "{name}") -> str:
        return self._file("indexes", name, "summary.tsv")

    @property
    def neighbors(self) -> str:
        return self._file("retrieve", "neighbors.tsv")

    @property
    def contaminated(self) -> str:
        return self._file("decontaminate", "contaminated.tsv")

    # report
    @property
    def report(self) -> str:
        return self._file("report")

    def report_figure(self, name: str) -> str:
        return self._file("report", f"{name}.png")

    # target compare
    def _compare(self, *parts: str) -> str:
        return self._file("compare", *parts)

    @property
    def compare_test(self) -> str:
        """The generated test set (compare.eval: demo)."""
        return self._compare("test.jsonl")

    @property
    def compare_heldout(self) -> str:
        """The test set held out of the pool (compare.eval: heldout)."""
        return self._compare("heldout.jsonl")

    @property
    def compare_student(self) -> str:
        return self._compare("student")

    @property
    def compare_candidates_h5(self) -> str:
        return self._compare("candidates.h5")

    @property
    def compare_candidates_quality(self) -> str:
        return self._compare("candidates_quality.tsv")

    @property
    def compare_pool(self) -> str:
        return self._compare("pool.h5")

    @property
    def compare_target_set(self) -> str:
        return self._compare("target_set", "dev.jsonl")

    @property
    def compare_target_router(self) -> str:
        return self._compare("target_set", "router.h5")

    def compare_picks(self, method: str = "{method}") -> str:
        return self._compare(method, "picks.tsv")

    def compare_selected(self, method: str = "{method}") -> str:
        """Method ``method``'s selection (``full_kept`` / ``full_raw``: the full pools)."""
        return self._compare(method, "selected_data.jsonl")

    def compare_selection_summary(self, method: str = "{method}") -> str:
        return self._compare(method, "selection_summary.tsv")

    def compare_random_draw(self, i: int) -> str:
        """The random baseline's draw for seed ``i`` > 0 (seed 0 is ``compare_selected("random")``)."""
        return self._compare("random", f"draw_{i}.jsonl")

    def compare_eval(self, method: str = "{method}") -> str:
        return self._compare(method, "eval.tsv")

    @property
    def compare_intrinsic(self) -> str:
        return self._compare("intrinsic.tsv")

    @property
    def compare_downstream(self) -> str:
        return self._compare("downstream.tsv")

    @property
    def compare_figure(self) -> str:
        return self._compare("compare.png")

    @property
    def compare_caption(self) -> str:
        return self._compare("caption.txt")

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
