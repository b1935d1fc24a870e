"""The results layout: paths against the literal layout the README documents, final targets, report inputs."""

import io
import tokenize

import pytest

from selectflow.layout import Layout, demo_log
from tests.workflow import REPO


def test_paths_are_the_documented_layout():
    p = Layout("demo")
    assert p.selected_data == "results/demo/selection/selected_data.jsonl"
    assert p.router_shard("a", "shard_00002") == "results/demo/router_data/a/shard_00002.h5"
    assert p.index_window("pool", 7) == "results/demo/indexes/pool/window_00007.faiss"
    assert p.index_window("pool", 7, "ids.tsv") == "results/demo/indexes/pool/window_00007.ids.tsv"
    assert p.index_embeddings("pool", 3) == "results/demo/indexes/pool/embeddings/group_00003.h5"
    assert p.distance_block(0, 2) == "results/demo/selection/distances/block_0_2.h5"
    assert p.compare_random_draw(2) == "results/demo/compare/random/draw_2.jsonl"
    assert p.proxy_model == "results/demo/proxy_model"
    assert p.log("router_dump/a/shard_00000") == "logs/demo/router_dump/a/shard_00000.log"
    assert p.benchmark("router_dump/a/shard_00000") == "benchmarks/demo/router_dump/a/shard_00000.tsv"
    assert p.candidates_log == "logs/demo/selection/candidates.log"
    assert demo_log("demo_pool") == "logs/demo/demo_pool.log"
    assert Layout("r", "/w").quality == "/w/results/r/selection/quality.tsv"


def test_without_values_a_path_is_the_rules_wildcard_pattern():
    p = Layout("r")
    assert p.shard() == "results/r/shards/{dataset}/{shard}.jsonl"
    assert p.store_group() == "results/r/router_store/{dataset}/{shard}.group.tsv"
    assert p.index_window(ext="json") == "results/r/indexes/{name}/window_{w}.json"
    assert p.index_embeddings() == "results/r/indexes/{name}/embeddings/group_{g}.h5"
    assert p.compare_eval() == "results/r/compare/{method}/eval.tsv"
    assert p.distance_block() == "results/r/selection/distances/block_{i}_{j}.h5"


@pytest.mark.parametrize("train, indexes", [(True, ["pool", "s1"]), (False, []), (True, []), (False, ["pool"])])
def test_final_targets_and_the_reports_later_stage_inputs(train, indexes):
    p = Layout("r")
    expected = ["results/r/selection/selected_data.jsonl", "results/r/selection/selection_summary.tsv"]
    expected += ["results/r/train/metrics.tsv"] if train else []
    expected += [f"results/r/indexes/{name}/summary.tsv" for name in indexes]
    expected += ["results/r/retrieve/neighbors.tsv"] if indexes else []
    assert p.final_targets(train=train, indexes=indexes) == expected
    stages = p.stage_outputs(train=train, warmup=True, indexes=indexes)
    # the report waits for what rule all asks for, no more: a stage left off is never forced to run
    assert [*stages["train"], *stages["indexes"]] == [t for t in expected if "/train/" in t or "/indexes/" in t]
    assert stages["warmup"] == ["results/r/warmup/metrics.tsv"]
    assert p.stage_outputs(train=train, warmup=False, indexes=indexes)["warmup"] == []


def test_rules_spell_no_results_path():
    """Every results/logs/benchmarks path of the rules comes from Layout (PATHS in rules/common.smk)."""
    found = []
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            is_string = tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1)
            if is_string and any(top in tok.string for top in ("results/", "logs/", "benchmarks/")):
                found.append(f"{path.name}:{tok.start[0]}: {tok.string}")
    assert found == []
