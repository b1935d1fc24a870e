"""Bad inputs end to end: what a user sees at the command line, and that nothing is left half-done.

Each case runs the real workflow (``snakemake`` on tests/bad_inputs/config.yaml in a
scratch folder, with a corpus file from tests/bad_inputs/) or the ``selectflow
continue-selection`` CLI, and checks: a non-zero exit, one message (repeated only by
Snakemake's retries) that names the file/record/key and says what to do, and no output
of the failed step on disk.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from selectflow.router.routerfile import (
    RouterShard,
    read_router_shard,
    write_router_shard,
)
from tests.workflow import REPO, snakemake

CORPUS = REPO / "tests" / "bad_inputs"


# ----------------------------------------------------------------------------- helpers


def write_config(folder: Path, datasets: dict, model: Path, *patches: dict) -> Path:
    """tests/bad_inputs/config.yaml with ``datasets`` and ``model.path`` set, then ``patches`` merged per section."""
    config = yaml.safe_load((CORPUS / "config.yaml").read_text())
    config["datasets"] = {name: str(path) for name, path in datasets.items()}
    config["model"] = {"path": str(model)}
    for patch in patches:
        for key, value in patch.items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(folder: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    return snakemake(folder, *args, "--cores", "2", "--resources", "gpu=1", config=config, check=False, timeout=600)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """``workflow(name, datasets, model, *patches)`` -> (folder, process): one Snakemake run per name, shared."""
    done = {}

    def run_once(name: str, datasets: dict, model: Path, *patches: dict) -> tuple[Path, subprocess.CompletedProcess]:
        if name not in done:
            folder = tmp_path_factory.mktemp(name)
            done[name] = folder, run(folder, write_config(folder, datasets, model, *patches))
        return done[name]

    return run_once


def job_errors(proc: subprocess.CompletedProcess) -> list[str]:
    """The ERROR lines of the failed jobs' logs (the profile's show-failed-logs prints them)."""
    return re.findall(r"ERROR selectflow\.job: (.*)", proc.stdout + proc.stderr)


def one_message(proc: subprocess.CompletedProcess) -> str:
    """The failed job's message; asserts that every ERROR line (one per Snakemake attempt) carries it."""
    assert proc.returncode != 0
    errors = job_errors(proc)
    assert errors, "no job error shown:\n" + (proc.stdout + proc.stderr)[-3000:]
    assert all(errors[0] in line for line in errors), errors
    assert "Traceback" not in errors[0]
    return errors[0]


def assert_nothing_half_written(folder: Path, *missing: str) -> None:
    """``missing`` (paths under results/bad) do not exist; every HDF5 left is whole; no temp files."""
    results = folder / "results" / "bad"
    for rel in missing:
        assert not (results / rel).exists(), f"{rel} exists after the failure"
    assert not (results / "selection" / "selected_data.jsonl").exists()
    for path in results.rglob("*.h5") if results.exists() else []:
        read_router_shard(path)  # raises if half-written
    if results.exists():
        leftovers = [p for p in results.rglob(".*") if p.name != ".snakemake_timestamp"]
        assert leftovers == [], "temp files left behind"


@pytest.fixture(scope="module")
def good_pool(demo_pool, tmp_path_factory) -> Path:
    """40 records of the demo pool: a dataset that passes."""
    path = tmp_path_factory.mktemp("good") / "good.jsonl"
    path.write_text("".join(demo_pool.read_text().splitlines(keepends=True)[:40]))
    return path


@pytest.fixture(scope="module")
def dense_model(demo_model, tmp_path_factory) -> Path:
    """A tiny dense Qwen3 (no MoE routers) saved locally, with the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("dense") / "dense-qwen3"
    Qwen3ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- dataset files (Snakemake)


@pytest.mark.slow
@pytest.mark.parametrize(
    "corpus, line, words",
    [
        ("malformed_json.jsonl", 3, ["malformed JSON", "fix or remove this line"]),
        ("no_response.jsonl", 3, ["no 'output' field"]),
        ("no_instruction.jsonl", 2, ["no user turn", "(no instruction)"]),
    ],
)
def test_bad_record_stops_at_split_naming_file_and_line(workflow, demo_model, corpus, line, words):
    folder, proc = workflow(corpus, {"d": CORPUS / corpus}, demo_model)
    message = one_message(proc)
    assert message.startswith(f"{CORPUS / corpus}:{line}: ")
    assert all(w in message for w in words), message
    assert "Error in rule split_dataset" in proc.stderr
    assert_nothing_half_written(folder, "shards/d", "router_data")


@pytest.mark.slow
def test_malformed_json_message_reads_cleanly(workflow, demo_model):
    _, proc = workflow("malformed_json.jsonl", {"d": CORPUS / "malformed_json.jsonl"}, demo_model)
    assert " at at " not in one_message(proc)


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["no_response.jsonl", "no_instruction.jsonl"])
def test_bad_record_message_says_what_to_do(workflow, demo_model, corpus):
    _, proc = workflow(corpus, {"d": CORPUS / corpus}, demo_model)
    assert "fix or remove" in one_message(proc)


@pytest.mark.slow
def test_empty_dataset(tmp_path, demo_model):
    proc = run(tmp_path, write_config(tmp_path, {"empty": CORPUS / "empty.jsonl"}, demo_model))
    message = one_message(proc)
    assert (
        message == f"dataset 'empty': {CORPUS / 'empty.jsonl'} holds no records; remove it from 'datasets' or fill it"
    )
    assert_nothing_half_written(tmp_path, "shards/empty")


@pytest.mark.slow
def test_dataset_path_that_does_not_exist(workflow, demo_model):
    folder, proc = workflow("missing", {"train": "data/train.jsonl"}, demo_model)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "dataset 'train': file data/train.jsonl does not exist" in out and "fix 'datasets.train'" in out
    assert "Execute" not in out  # stopped while reading the workflow: no job ran
    assert not (folder / "results").exists()


DUPLICATES = {"a": CORPUS / "duplicate_ids_a.jsonl", "b": CORPUS / "duplicate_ids_b.jsonl"}


@pytest.mark.slow
def test_duplicate_sample_ids_fail_before_the_router_dump(workflow, demo_model):
    folder, proc = workflow("duplicates", DUPLICATES, demo_model)
    message = one_message(proc)
    assert proc.returncode != 0 and not list(folder.glob("results/bad/router_data/*/*.h5"))
    assert "sample_id 'q1' is used by dataset 'a' line 1, dataset 'b' line 1" in message, message
    assert "unique 'id's across datasets" in message
    assert "Error in rule pool_manifest" in proc.stderr
    assert_nothing_half_written(folder, "pool_manifest.tsv")


# ----------------------------------------------------------------------------- config (Snakemake, dry run)


def config_message(proc: subprocess.CompletedProcess) -> str:
    """What a dry run says about a bad config: short, no traceback, no schema dump."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert len(out.splitlines()) <= 20, out
    assert "Traceback" not in out and 'File "' not in out and "$schema" not in out and "properties" not in out, out
    return out


@pytest.mark.parametrize(
    "corpus, words",
    [
        (
            "config_unknown_key.yaml",
            ["'selection.selection_pct' is not a config key; did you mean 'selection_percentage'?"],
        ),
        ("config_wrong_type.yaml", ["'shard_size' is '1e3', it must be a whole number"]),
        (
            "config_percentage_as_percent.yaml",
            ["'selection.selection_percentage' is 5, it must be at most 1", "in (0, 1]"],
        ),
        ("config_percentage_zero.yaml", ["'selection.importance_selection_percentage' is 0, it must be more than 0"]),
        (
            "config_wrong_enum.yaml",
            ["'selection.quality_method' is 'combind', it must be one of auto, combined", "did you mean 'combined'?"],
        ),
        ("config_train_typo.yaml", ["'train.learning_rat' is not a config key; did you mean 'learning_rate'?"]),
    ],
)
def test_bad_config_is_rejected_before_any_job(tmp_path, demo_model, good_pool, corpus, words):
    patch = yaml.safe_load((CORPUS / corpus).read_text())
    proc = run(tmp_path, write_config(tmp_path, {"good": good_pool}, demo_model, patch), "-n")
    out = config_message(proc)
    assert all(w in out for w in words), out[-2000:]
    assert "Job stats" not in out and not (tmp_path / "results").exists()


def test_config_without_model_says_how_to_name_one(tmp_path, good_pool):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"good": str(good_pool)}}))
    out = config_message(run(tmp_path, path, "-n"))
    assert "'model' is missing" in out and "model:" in out and "path:" in out and "{path: proxy}" in out


# ----------------------------------------------------------------------------- model (Snakemake)


@pytest.mark.slow
def test_dense_model_has_no_routers(tmp_path, good_pool, dense_model):
    proc = run(tmp_path, write_config(tmp_path, {"good": good_pool}, dense_model))
    message = one_message(proc)
    assert message.startswith("no MoE routers found in Qwen3ForCausalLM")
    assert "use an MoE model or set 'router_dump.router_pattern'" in message
    assert "Error in rule router_dump" in proc.stderr
    # an input error is not retried with a smaller batch: attempts 2 and 3 stop at once
    out = proc.stdout + proc.stderr
    assert "attempt 2 of rule router_dump skipped" in out and "attempt 3 of rule router_dump skipped" in out
    assert_nothing_half_written(tmp_path, "router_data/good/shard_00000.h5")


# ----------------------------------------------------------------------------- k vs the pool


@pytest.mark.slow
def test_selection_percentage_one_selects_every_kept_sample(workflow, demo_model, good_pool):
    """k = the whole pool: everything that passed the quality filter is selected, with a warning."""
    folder, proc = workflow("everything", {"good": good_pool}, demo_model, {"selection": {"selection_percentage": 1.0}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sel = folder / "results" / "bad" / "selection"
    summary = dict(zip(*[ln.split("\t") for ln in (sel / "selection_summary.tsv").read_text().splitlines()]))
    assert summary["pool"] == "40" and 0 < int(summary["kept"]) < 40  # the quality filter drops some
    lines = (sel / "selected_data.jsonl").read_text().splitlines()
    assert len(lines) == int(summary["selected"]) == int(summary["kept"])
    assert len({json.loads(ln)["sample_id"] for ln in lines}) == len(lines)
    log = (folder / "logs" / "bad" / "selection" / "candidates.log").read_text()
    assert f"k=40 exceeds the {summary['kept']} samples that passed the quality filter; selecting all of them" in log


@pytest.mark.slow
def test_selection_percentage_one_warns_on_the_console(workflow, demo_model, good_pool):
    _, proc = workflow("everything", {"good": good_pool}, demo_model, {"selection": {"selection_percentage": 1.0}})
    assert "selecting all of them" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- router data (CLI)


def write_shard(path: Path, ids: list[str], layers: int = 2, experts: int = 4, nan_at: int | None = None) -> None:
    rng = np.random.default_rng(len(ids) + experts)
    n = len(ids)
    probs = rng.dirichlet(np.ones(experts), size=(n, layers)).astype(np.float32)
    if nan_at is not None:
        probs[nan_at, 1, 2] = np.nan
    records = [
        json.dumps(
            {
                "sample_id": s,
                "dataset": "d",
                "line": k + 1,
                "prompt": f"p {s}",
                "response": f"r {s}",
                "record": {"instruction": "i", "output": "o"},
            }
        )
        for k, s in enumerate(ids)
    ]
    write_router_shard(
        path,
        RouterShard(
            sample_id=np.array(ids, dtype=object),
            moe_probs=probs,
            nll_response=rng.uniform(1, 2, n).astype(np.float32),
            n_tokens=np.full(n, 20, np.int32),
            n_response_tokens=np.full(n, 8, np.int32),
            nll_response_alone=rng.uniform(1.2, 2.5, n).astype(np.float32),
            record=np.array(records, dtype=object),
        ),
    )


def continue_selection(router_dir: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "selectflow",
        "continue-selection",
        "--router_data_dir",
        str(router_dir),
        "--output_path",
        str(out / "selected_data.jsonl"),
        "--device",
        "cpu",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def cli_error(proc: subprocess.CompletedProcess) -> str:
    """The CLI's one error line; asserts exit status 2 and no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


def test_nan_in_router_data(tmp_path):
    shards = tmp_path / "router_data"
    write_shard(shards / "d" / "shard_00000.h5", [f"a{i}" for i in range(10)])
    write_shard(shards / "d" / "shard_00001.h5", [f"b{i}" for i in range(10)], nan_at=3)
    message = cli_error(continue_selection(shards, tmp_path / "out", "--selection_percentage", "0.5"))
    assert f"{shards / 'd' / 'shard_00001.h5'}: moe_probs has NaN/inf" in message
    assert "try dtype float32" in message and "delete the file" in message
    assert list((tmp_path / "out").iterdir()) == []


def test_nan_message_names_the_sample_id_as_text(tmp_path):
    shards = tmp_path / "router_data"
    write_shard(shards / "shard_00000.h5", [f"b{i}" for i in range(10)], nan_at=3)
    assert "(first at sample 'b3')" in cli_error(
        continue_selection(shards, tmp_path / "out", "--selection_percentage", "0.5")
    )


@pytest.mark.parametrize("shape_a, shape_b", [((2, 4), (2, 8)), ((2, 4), (3, 4))])  # E differs, L differs
def test_shards_with_mismatched_layers_or_experts(tmp_path, shape_a, shape_b):
    shards = tmp_path / "router_data"
    write_shard(shards / "a.h5", [f"a{i}" for i in range(10)], *shape_a)
    write_shard(shards / "b.h5", [f"b{i}" for i in range(10)], *shape_b)
    message = cli_error(continue_selection(shards, tmp_path / "out", "--selection_percentage", "0.5"))
    assert message == (
        f"error: router shards disagree on [L, E]: {shards / 'a.h5'} has {list(shape_a)}, "
        f"{shards / 'b.h5'} has {list(shape_b)}; they come from different models — rerun "
        "router_dump with one model"
    )
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("value, bound", [("5", "at most 1"), ("0", "more than 0"), ("-0.1", "more than 0")])
def test_cli_percentage_outside_zero_one(tmp_path, value, bound):
    shards = tmp_path / "router_data"
    write_shard(shards / "a.h5", [f"a{i}" for i in range(10)])
    proc = continue_selection(shards, tmp_path / "out", "--selection_percentage", value)
    assert cli_error(proc) == "error: continue-selection flags: 1 config mistake (every key: config/README.md)"
    assert f"- 'selection.selection_percentage' is {float(value)}, it must be {bound} (share of the" in proc.stderr
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_cli_selection_percentage_one_selects_every_kept_sample(tmp_path):
    shards = tmp_path / "router_data"
    write_shard(shards / "a.h5", [f"a{i:02d}" for i in range(30)])
    proc = continue_selection(shards, tmp_path / "out", "--selection_percentage", "1.0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    quality = (tmp_path / "out" / "quality.tsv").read_text().splitlines()[1:]
    kept = sum(ln.split("\t")[3] == "True" for ln in quality)
    assert 0 < kept < 30  # IFD >= 1 samples are dropped
    assert len((tmp_path / "out" / "selected_data.jsonl").read_text().splitlines()) == kept
    assert f"k=30 exceeds the {kept} samples that passed the quality filter; selecting all of them" in proc.stderr
