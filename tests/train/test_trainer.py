"""The SFT trainer on the tiny demo MoE (CPU): loss, outputs, resume after SIGKILL, levers, warm-up."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from selectflow.data.demo import build_proxy_model, write_demo_pool
from selectflow.data.records import read_dataset, write_jsonl
from selectflow.runtime.errors import SelectFlowError
from selectflow.train import train, train_on_pool
from selectflow.train.estimate import estimate_training_memory, model_shape
from selectflow.train.loop import METRIC_COLUMNS

# The CPU semantics (bit-exact resume, LoRA touching only adapters, budgets) are checked on
# the CPU even where a GPU exists: TF32 and bf16 change the last bits there by design.
FAST = {
    "learning_rate": 3e-3,
    "max_length": 96,
    "monitor_interval": 4,
    "save_every": 0,
    "warmup_ratio": 0.0,
    "device": "cpu",
}


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A tiny MoE (2 layers, 4 experts) and a 64-record selection in the original Alpaca format."""
    root = tmp_path_factory.mktemp("train_demo")
    pool = root / "pool.jsonl"
    write_demo_pool(pool, 200, seed=0)
    model = build_proxy_model(
        root / "model", pool, seed=0, vocab_size=512, n_layers=2, n_experts=4, hidden=32, pretrain_epochs=0
    )
    records = read_dataset(pool, "demo")[:64]
    data = root / "selected_data.jsonl"
    write_jsonl(data, [{**r["record"], "sample_id": r["sample_id"]} for r in records])
    return {"root": root, "pool": pool, "model": model, "data": data}


def weights(out_dir):
    return load_file(str(out_dir / "checkpoint" / "model.safetensors"))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_loss_falls_and_outputs_are_written(demo, tmp_path):
    out = tmp_path / "run"
    summary = train(
        demo["model"],
        demo["data"],
        out,
        {**FAST, "max_steps": 16, "micro_batch_size": 4, "gradient_accumulation_steps": 2},
    )
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert metrics["step"].tolist() == list(range(1, 17))
    assert metrics["loss"].iloc[-4:].mean() < metrics["loss"].iloc[0] - 0.5
    assert (metrics["host_rss_mb"] > 0).all() and (metrics["samples_per_s"] > 0).all()
    memory = pd.read_csv(out / "memory.tsv", sep="\t")
    assert memory["step"].tolist() == [4, 8, 12, 16]
    assert not (out / "resume").exists()
    assert summary["steps"] == 16 and summary["effective_batch"] == 8 and summary["epochs"] == 2.0
    assert json.loads((out / "summary.json").read_text())["final_loss"] == pytest.approx(summary["final_loss"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    base = AutoModelForCausalLM.from_pretrained(demo["model"])
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)
    assert len(AutoTokenizer.from_pretrained(out / "checkpoint")) == len(AutoTokenizer.from_pretrained(demo["model"]))


KILLED_RUN = textwrap.dedent("""
    import json, os, signal, sys
    from selectflow.train import train

    model, data, out, cfg, kill_at = sys.argv[1:]
    def on_step(step):
        if step == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
    train(model, data, out, json.loads(cfg), on_step=on_step)
""")


def test_resume_after_sigkill_matches_uninterrupted_run(demo, tmp_path):
    cfg = {
        **FAST,
        "max_steps": 10,
        "save_every": 3,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "preset": "combined",
        "gpu_cache_size": 16,
    }
    reference = tmp_path / "reference"
    train(demo["model"], demo["data"], reference, cfg)

    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(demo["model"]), str(demo["data"]), str(killed), json.dumps(cfg), "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (killed / "checkpoint").exists()
    state = json.loads((killed / "resume" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (3, 0, 24)
    retried = tmp_path / "retried"
    shutil.copytree(killed, retried)

    summary = train(demo["model"], demo["data"], killed, cfg)
    assert summary["resumed_from_step"] == 3
    ref, res = weights(reference), weights(killed)
    assert all(torch.equal(ref[k], res[k]) for k in ref), "same micro-batch: bitwise equal weights"
    ref_metrics = pd.read_csv(reference / "metrics.tsv", sep="\t")
    res_metrics = pd.read_csv(killed / "metrics.tsv", sep="\t")
    assert res_metrics["step"].tolist() == list(range(1, 11))
    assert res_metrics["loss"].tolist() == ref_metrics["loss"].tolist()

    # a Snakemake retry (attempt 2, resource micro_batch_size 2) resumes with micro-batch 2 x 4: same samples per step
    summary2 = train(demo["model"], demo["data"], retried, cfg, micro_batch_size=2, attempt=2)
    split = (summary2["resumed_from_step"], summary2["micro_batch_size"], summary2["gradient_accumulation_steps"])
    assert split == (3, 2, 4)
    assert max_diff(ref, weights(retried)) <= 1e-6


def test_loader_pipelines_give_identical_training(demo, tmp_path):
    base = {**FAST, "max_steps": 12, "micro_batch_size": 4, "gradient_accumulation_steps": 2}
    plain = train(demo["model"], demo["data"], tmp_path / "plain", base)
    workers = train(demo["model"], demo["data"], tmp_path / "workers", {**base, "preset": "prefetch", "num_workers": 1})
    cached = train(
        demo["model"], demo["data"], tmp_path / "cached", {**base, "preset": "combined", "gpu_cache_size": 40}
    )
    ref = weights(tmp_path / "plain")
    for name in ("workers", "cached"):
        other = weights(tmp_path / name)
        assert all(torch.equal(ref[k], other[k]) for k in ref), name
    assert plain["cache"] is None
    stats = cached["cache"]
    # 12 steps x 8 = 96 reads of 64 samples (1.5 epochs) through a 40-sample LRU
    assert stats["misses"] == 64 and stats["device_hits"] + stats["host_hits"] == 32
    assert stats["evictions"] > 0 and stats["device_hits"] > 0 and stats["device_items"] == 40
    assert workers["final_loss"] == plain["final_loss"]


def test_lora_trains_adapters_only_and_saves_merged_model(demo, tmp_path):
    cfg = {
        **FAST,
        "max_steps": 4,
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    }
    summary = train(demo["model"], demo["data"], tmp_path / "lora", cfg)
    assert summary["checkpoint_kind"] == "full (LoRA merged)"
    base, tuned = load_file(str(demo["model"] / "model.safetensors")), weights(tmp_path / "lora")
    assert base.keys() == tuned.keys()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {k for k in base if k.endswith(("q_proj.weight", "v_proj.weight"))}


def test_gradient_checkpointing_and_bf16_run_on_cpu(demo, tmp_path):
    summary = train(
        demo["model"],
        demo["data"],
        tmp_path / "gc",
        {
            **FAST,
            "max_steps": 2,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "precision": "bf16",
            "gradient_checkpointing": True,
        },
    )
    assert summary["precision"] == "bf16" and summary["steps"] == 2
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "gc").values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"precision": "fp16"}, "train.precision fp16 needs a CUDA device"),
        ({"load_in_8bit": True, "lora": {"enabled": True}}, "train.load_in_8bit needs a CUDA device"),
        (
            {"cpu_offload": {"enabled": True, "max_memory": {"0": "8GB", "cpu": "30GB"}}, "lora": {"enabled": True}},
            "train.cpu_offload.enabled needs a CUDA device",
        ),
        ({"device": "cuda"}, "CUDA is not available"),
    ],
)
def test_cuda_only_levers_fail_clearly_on_cpu(demo, tmp_path, cfg, match):
    with pytest.raises(SelectFlowError, match=match):
        train(demo["model"], demo["data"], tmp_path / "never", cfg)
    assert not (tmp_path / "never").exists()


def test_gpu_memory_budget_caps_the_micro_batch(demo, tmp_path):
    cfg = {**FAST, "max_steps": 1, "micro_batch_size": 4, "gradient_accumulation_steps": 2}
    one = estimate_training_memory(
        model_shape(demo["model"]),
        micro_batch=1,
        max_length=96,
        precision="fp32",
        gradient_checkpointing=False,
        load_in_8bit=False,
    )
    summary = train(demo["model"], demo["data"], tmp_path / "budget", {**cfg, "gpu_memory_budget": one.total + 1})
    assert (summary["micro_batch_size"], summary["gradient_accumulation_steps"], summary["effective_batch"]) == (
        1,
        8,
        8,
    )


def to_sharegpt(rec):
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"] else "")
    return {
        "id": rec["id"],
        "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": rec["output"]}],
    }


def to_messages(rec):
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"] else "")
    return {
        "id": rec["id"],
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}],
    }


def test_train_on_pool_uses_a_seeded_subset_of_several_formats(demo, tmp_path):
    # chat formats refuse an empty turn (an Alpaca record with an empty output is kept)
    records = [r["record"] for r in read_dataset(demo["pool"], "demo") if r["response"].strip()][:40]
    sharegpt, messages = tmp_path / "chat.jsonl", tmp_path / "msgs.jsonl"
    write_jsonl(sharegpt, [to_sharegpt(r) for r in records[:20]])
    write_jsonl(messages, [to_messages(r) for r in records[20:]])
    cfg = {**FAST, "max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1}
    summary = train_on_pool(demo["model"], [sharegpt, messages], tmp_path / "warmup", cfg, subset_ratio=0.25)
    assert summary["n_samples"] == 10 and (tmp_path / "warmup" / "checkpoint" / "model.safetensors").is_file()
    with pytest.raises(SelectFlowError, match="subset_ratio"):
        train_on_pool(demo["model"], sharegpt, tmp_path / "bad", cfg, subset_ratio=0.0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_cache_and_prefetch_deliver_device_batches_in_order():
    from selectflow.train.cache import DeviceCacheDataset
    from selectflow.train.prefetch import PrefetchLoader

    dev = torch.device("cuda", torch.cuda.current_device())
    cache = DeviceCacheDataset([{"input_ids": torch.full((5,), i, dtype=torch.int32)} for i in range(8)], dev, 4)
    first, again = cache[3], cache[3]
    assert first["input_ids"].device == dev and again["input_ids"] is first["input_ids"]
    assert (cache.stats()["misses"], cache.stats()["device_hits"]) == (1, 1)
    source = [{"x": torch.full((1024,), k).pin_memory()} for k in range(20)]
    got = [b["x"] for b in PrefetchLoader(source, dev, prefetch_factor=2)]
    assert all(t.device == dev for t in got)
    assert [int(t[0]) for t in got] == list(range(20))


@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_training_with_combined_preset_reports_device_peak(demo, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    summary = train(
        demo["model"],
        demo["data"],
        tmp_path / precision,
        {
            **FAST,
            "device": "cuda",
            "max_steps": 6,
            "precision": precision,
            "preset": "combined",
            "empty_cache_every": 2,
        },
    )
    assert summary["device"].startswith("cuda") and summary["precision"] == precision
    assert summary["measured_peak_mb"] > 0 and summary["cache"]["device_items"] > 0
    metrics = pd.read_csv(tmp_path / precision / "metrics.tsv", sep="\t")
    assert (metrics["gpu_peak_mb"] > 0).all() and metrics["loss"].notna().all()
