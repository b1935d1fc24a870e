"""The proxy scorer: a tiny MoE built on the user's own pool (model.path: proxy, selectflow proxy-model)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from selectflow.cli import main
from selectflow.config import build_config
from selectflow.data.preflight import preflight
from selectflow.data.realtext import write_realtext_pool
from selectflow.data.records import read_dataset, read_jsonl
from selectflow.runtime.errors import SelectFlowError
from selectflow.schema import section_values
from tests.e2e.test_bad_inputs_repo import output, repo_copy

SMALL = [
    "--vocab-size",
    "400",
    "--n_layers",
    "1",
    "--n-experts",
    "4",
    "--hidden",
    "16",
    "--pretrain_epochs",
    "0.5",
    "--max-length",
    "48",
]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Real text in three formats, 90 records each (the docstring pool, junk planted)."""
    return write_realtext_pool(tmp_path_factory.mktemp("rt"), 270, seed=2)


def test_proxy_model_command_builds_a_seeded_moe_of_the_pool(pool, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = ["proxy-model", "--data", str(pool["alpaca"]), "--data", str(pool["messages"]), *SMALL]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert sha(tmp_path / "a" / "model.safetensors") == sha(tmp_path / "b" / "model.safetensors")
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    assert sha(tmp_path / "a" / "model.safetensors") != sha(tmp_path / "c" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_experts, cfg.hidden_size) == ("qwen3_moe", 1, 4, 16)
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert len(tok) == 400 == cfg.vocab_size
    # the tokenizer is the pool's: its merges shorten the pool's text well below one token per byte
    text = " ".join(r["response"] for r in read_dataset(pool["alpaca"], "a"))
    assert len(tok(text)["input_ids"]) < 0.8 * len(text.encode())
    # pre-trained on the pool: a pool response is likelier than under the seeded, untrained weights
    assert main([*args, "--pretrain-epochs", "0", "--out", str(tmp_path / "raw")]) == 0
    import torch

    raw = AutoModelForCausalLM.from_pretrained(tmp_path / "raw")
    rec = read_dataset(pool["alpaca"], "a")[0]
    ids = torch.tensor([tok(rec["prompt"] + rec["response"])["input_ids"][:48]])
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss < raw(input_ids=ids, labels=ids).loss


def test_model_path_proxy_resolves_to_the_rule_output_and_passes_preflight(pool, tmp_path, monkeypatch):
    config = section_values_all({"run": "mine", "datasets": {"a": str(pool["alpaca"])}, "model": {"path": "proxy"}})
    assert build_config(config).model_path == "results/mine/proxy_model"
    monkeypatch.chdir(tmp_path)
    assert preflight(config, "results/mine") == []
    config["model"]["path"] = "no/such/model"
    with pytest.raises(SelectFlowError, match="'model.path' no/such/model does not exist"):
        preflight(config, "results/mine")


def section_values_all(config: dict) -> dict:
    """``config`` validated with the schema's defaults filled in, as the workflow sees it."""
    from selectflow.schema import schema, with_defaults

    return with_defaults(config, schema())


@pytest.mark.slow
def test_own_jsonl_with_only_run_datasets_and_model_proxy_runs_end_to_end(tmp_path):
    """The README's recipe with a config of three keys, from a copy of the repository root."""
    (tmp_path / "repo").mkdir()
    root = repo_copy(tmp_path / "repo")
    write_realtext_pool(tmp_path / "rt", 900, seed=4)
    (root / "data" / "mine.jsonl").write_text((tmp_path / "rt" / "alpaca.jsonl").read_text())
    (root / "my.yaml").write_text(
        yaml.safe_dump({"run": "mine", "datasets": {"mine": "data/mine.jsonl"}, "model": {"path": "proxy"}})
    )
    check = subprocess.run(
        [sys.executable, "-m", "selectflow", "check", "--configfile", "my.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, output(check)[-3000:]
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "my.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0 and "proxy_model" in output(dry), output(dry)[-3000:]
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=1", "--configfile", "my.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, output(run)[-6000:]
    proxy = root / "results" / "mine" / "proxy_model"
    assert (proxy / "model.safetensors").is_file() and (proxy / "tokenizer.json").is_file()
    assert json.loads((proxy / "config.json").read_text())["num_local_experts"] == section_values("proxy")["n_experts"]
    assert not (root / "resources" / "demo").exists()  # the demo model was never needed
    pool = {r["id"]: r for r in read_jsonl(root / "data" / "mine.jsonl")}
    selected = read_jsonl(root / "results" / "mine" / "selection" / "selected_data.jsonl")
    ids = [r["sample_id"] for r in selected]
    assert len(ids) == round(0.05 * len(pool)) == len(set(ids)) and set(ids) <= set(pool)
    # the router data was dumped by the proxy: its attributes name the folder
    import h5py

    shard = next((root / "results" / "mine" / "router_data" / "mine").glob("*.h5"))
    with h5py.File(shard) as f:
        assert f.attrs["model_path"] == "results/mine/proxy_model"
