"""Training data loading: plain DataLoader vs device cache vs prefetch vs combined.

Usage::

    python bench/bench_loader.py [--quick] [--device auto|cpu|cuda] [--consumer loader|train|both]
    python bench/bench_loader.py --estimate [--quick]     # predicted vs measured peak (CUDA)

Columns: ``samples_per_s`` and ``x_plain`` (its ratio to ``plain``); ``samples_per_cpu_s``
and ``cpu_x_plain`` (samples per CPU-second of the process and its DataLoader workers: the
cost, less sensitive than wall time to other load on a shared machine); ``host_peak_rss_mb``
(``ru_maxrss`` of the subprocess, which the torch / transformers imports dominate) and
``loop_pss_growth_mb`` (peak PSS of the process and its DataLoader workers while the stream
runs, minus the PSS before it; polled every 20 ms); ``device_peak_mb``; ``cache_hit_pct``
(device hits / reads).

Loader mode: the same tokenised demo data (``selectflow.data.demo`` pool, its BPE tokenizer)
goes through :class:`selectflow.train.loader.BatchStream` (the trainer's pipeline) in five
configurations, each in its own subprocess so that its host peak RSS is its own:

* ``plain``: torch ``DataLoader``, no workers, tokenising every epoch, copy to the device;
* ``workers``: the same with one worker process and pinned memory;
* ``gpu_cache``: preset ``basic`` (LRU cache of tokenised samples on the device);
* ``prefetch``: preset ``prefetch`` (background thread, side CUDA stream, pinned batches);
* ``combined``: preset ``combined`` (cache + prefetch thread).

``--consumer loader`` times the stream alone (samples/s over several epochs: the first
fills the cache); ``--consumer train`` runs the real trainer on the demo MoE with each
preset (samples/s of the training loop). Repeats are interleaved; the table gives medians
and ratios against ``plain`` measured in the same run.

Estimate mode: for a few models (the demo MoE and random dense Llama-style models built
from configs) and settings (precision, micro-batch, length, gradient checkpointing, LoRA),
a subprocess trains 3 steps on samples that fill ``max_length`` and reports the trainer's
predicted peak beside ``torch.cuda.max_memory_allocated``. Without CUDA the measured
column is empty.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "plain": {"use_gpu_cache": False, "use_prefetch": False, "num_workers": 0, "pin_memory": False},
    "workers": {"use_gpu_cache": False, "use_prefetch": False, "num_workers": 1, "pin_memory": True},
    "gpu_cache": {"preset": "basic"},
    "prefetch": {"preset": "prefetch"},
    "combined": {"preset": "combined"},
}


def run_worker(spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; return its RESULT line."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {spec.get('name')} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


class PssSampler:
    """Peak memory of this process and its children (DataLoader workers), polled every 20 ms.

    PSS (proportional set size), so pages a forked worker shares with its parent count once.
    """

    def __init__(self):
        import threading

        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.pss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def pss(self) -> float:
        import psutil

        total = self.proc.memory_full_info().pss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_full_info().pss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.pss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.pss())


def worker_loader(spec: dict) -> dict:
    import torch
    from transformers import AutoTokenizer

    from selectflow.config import resolve_train_config
    from selectflow.runtime.device import resolve_device
    from selectflow.train.data import (
        TokenizedDataset,
        load_training_pairs,
        plan_steps,
        split_micro,
        steps_per_epoch,
    )
    from selectflow.train.loader import BatchStream

    device = resolve_device(spec["device"])
    c = resolve_train_config(
        {
            **spec["cfg"],
            "micro_batch_size": spec["micro"],
            "gradient_accumulation_steps": 1,
            "max_length": spec["max_length"],
        }
    )
    pairs = load_training_pairs(spec["data"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    n = len(pairs)
    steps = plan_steps({}, n, spec["micro"], 0, 0, spec["epochs"] * steps_per_epoch(n, spec["micro"]))
    micro_batches = [mb for step in steps for mb in split_micro(step, spec["micro"])]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    count, checksum = 0, 0
    with PssSampler() as pss:
        cpu0 = os.times()
        t0 = time.perf_counter()
        with BatchStream(
            TokenizedDataset(pairs, tokenizer, spec["max_length"]), micro_batches, c, device, tokenizer.pad_token_id
        ) as stream:
            for batch in stream:
                count += batch["input_ids"].shape[0]
                checksum += int(batch["attention_mask"].sum())
            cache = stream.cache.stats() if stream.cache is not None else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        cpu1 = os.times()
    cpu = sum(cpu1[:4]) - sum(cpu0[:4])  # user + system, this process and its reaped DataLoader workers
    return {
        "samples": count,
        "checksum": checksum,
        "samples_per_s": count / elapsed,
        "samples_per_cpu_s": count / cpu,
        "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loop_pss_growth_mb": pss.peak - pss.base,
        "device_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "cache": cache,
    }


def worker_train(spec: dict) -> dict:
    from selectflow.train import train

    cfg = {
        **spec["cfg"],
        "device": spec["device"],
        "epochs": spec["epochs"],
        "max_length": spec["max_length"],
        "save_every": 0,
        "monitor_interval": 0,
        **spec.get("train", {}),
    }
    with tempfile.TemporaryDirectory() as out:
        s = train(spec["model"], spec["data"], Path(out) / "run", cfg)
    samples = s["samples_per_s"] * s["train_seconds"]
    return {
        "samples_per_s": s["samples_per_s"],
        "samples_per_cpu_s": samples / s["train_cpu_seconds"],
        "host_peak_rss_mb": s["host_peak_rss_mb"],
        "loop_pss_growth_mb": None,
        "device_peak_mb": s["measured_peak_mb"],
        "predicted_peak_mb": s["estimated_peak_mb"],
        "micro_batch_size": s["micro_batch_size"],
        "cache": s["cache"],
        "checksum": None,
    }


def prepare_demo(work: Path, n_records: int) -> tuple[Path, Path]:
    from selectflow.data.demo import build_proxy_model, write_demo_pool
    from selectflow.data.records import read_dataset, write_jsonl

    pool = work / "pool.jsonl"
    write_demo_pool(pool, n_records, seed=0)
    model = build_proxy_model(work / "model", pool, seed=0, pretrain_epochs=0)
    data = work / "selected_data.jsonl"
    write_jsonl(data, [{**r["record"], "sample_id": r["sample_id"]} for r in read_dataset(pool, "demo")])
    return model, data


def median_rows(results: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, runs in results.items():
        hits = None
        if runs[0]["cache"]:
            cache = runs[0]["cache"]
            total = cache["device_hits"] + cache["host_hits"] + cache["misses"]
            hits = round(100.0 * cache["device_hits"] / max(total, 1), 1)
        rows.append(
            {
                "variant": name,
                "samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
                "samples_per_cpu_s": None
                if runs[0]["samples_per_cpu_s"] is None
                else statistics.median(r["samples_per_cpu_s"] for r in runs),
                "host_peak_rss_mb": statistics.median(r["host_peak_rss_mb"] for r in runs),
                "loop_pss_growth_mb": None
                if runs[0]["loop_pss_growth_mb"] is None
                else statistics.median(r["loop_pss_growth_mb"] for r in runs),
                "device_peak_mb": runs[0]["device_peak_mb"],
                "cache_hit_pct": hits,
                "runs": " ".join(f"{r['samples_per_s']:.0f}" for r in runs),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    base = df.loc[df["variant"] == "plain"].iloc[0]
    df.insert(2, "x_plain", (df["samples_per_s"] / base["samples_per_s"]).round(2))
    if df["samples_per_cpu_s"].notna().all():
        df.insert(4, "cpu_x_plain", (df["samples_per_cpu_s"] / base["samples_per_cpu_s"]).round(2))
    else:
        df = df.drop(columns="samples_per_cpu_s")
    df.insert(
        df.columns.get_loc("host_peak_rss_mb") + 1,
        "rss_vs_plain_mb",
        (df["host_peak_rss_mb"] - base["host_peak_rss_mb"]).round(1),
    )
    return df.round(
        {
            "samples_per_s": 1,
            "samples_per_cpu_s": 1,
            "host_peak_rss_mb": 1,
            "loop_pss_growth_mb": 1,
            "device_peak_mb": 1,
        }
    ).to_string(index=False)


def loader_mode(args) -> None:
    import torch

    n_records, epochs, repeats = (1000, 3, 1) if args.quick else (3000, 3, 3)
    repeats = args.repeats or repeats
    consumers = (
        ["loader"] if args.consumer == "loader" else ["train"] if args.consumer == "train" else ["loader", "train"]
    )
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, data = prepare_demo(work, n_records)
        for consumer in consumers:
            spec_base = {
                "consumer": consumer,
                "model": str(model),
                "data": str(data),
                "device": device,
                "threads": args.threads,
                "micro": args.micro_batch,
                "max_length": 256,
                "epochs": epochs,
            }
            if consumer == "train" and device == "cpu":
                # the demo MoE trains at ~25 samples/s on 2 CPU cores: a slice of the data keeps the run short
                train_data = work / "train_subset.jsonl"
                train_data.write_text("\n".join(data.read_text().splitlines()[:200]) + "\n")
                spec_base.update(data=str(train_data), epochs=2)
            results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
            for r in range(repeats):
                names = list(VARIANTS)
                names = names[r % len(names) :] + names[: r % len(names)]  # interleave: no variant always first
                for name in names:
                    results[name].append(run_worker({**spec_base, "name": name, "cfg": VARIANTS[name]}))
            sums = {res[0]["checksum"] for res in results.values()}
            assert len(sums) == 1, f"variants delivered different batches: {sums}"
            print(
                f"\n## consumer={consumer}, device={device}, {Path(spec_base['data']).name}: "
                f"{sum(1 for _ in open(spec_base['data']))} samples x {spec_base['epochs']} epochs, micro-batch "
                f"{args.micro_batch}, max_length 256, {repeats} interleaved repeat(s), median"
                f"{f', {args.threads} torch thread(s)' if args.threads else ''}"
            )
            print(table(median_rows(results)))


ESTIMATE_MODELS = {
    # name: (llama config kwargs or None for the demo MoE)
    "demo-moe": None,
    "dense-45m": dict(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "dense-170m": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=32000,
    ),
}
ESTIMATE_SETTINGS = [  # precision, micro, max_length, gradient checkpointing, lora
    ("fp32", 4, 512, False, False),
    ("bf16", 4, 512, False, False),
    ("fp16", 4, 512, False, False),
    ("bf16", 8, 1024, False, False),
    ("bf16", 8, 1024, True, False),
    ("bf16", 8, 1024, False, True),
]


def build_dense(path: Path, tokenizer_dir: Path, kwargs: dict) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.for_model(
        "llama",
        tie_word_embeddings=False,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        **kwargs,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def long_samples(path: Path, n: int, words: int) -> Path:
    """Records whose responses exceed ``max_length`` tokens, so every sample fills the window."""
    from selectflow.data.records import write_jsonl

    rng = random.Random(0)
    vocab = "the of capital animal cook minutes python list returns number forest ocean spice rice".split()
    write_jsonl(
        path,
        [
            {
                "id": f"long-{i}",
                "instruction": "Write a long text.",
                "input": "",
                "output": " ".join(rng.choice(vocab) for _ in range(words)),
            }
            for i in range(n)
        ],
    )
    return path


def estimate_mode(args) -> None:
    import pandas as pd
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cuda":
        print("note: no CUDA device; measured peaks stay empty (the estimate mode is meant for a GPU)")
    models = ["demo-moe", "dense-45m"] if args.quick else list(ESTIMATE_MODELS)
    settings = ESTIMATE_SETTINGS[:2] if args.quick else ESTIMATE_SETTINGS
    if device != "cuda":
        settings = [s for s in settings if s[0] != "fp16"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo_model, _ = prepare_demo(work, 300)
        data = long_samples(work / "long.jsonl", 64, 2600)
        for name in models:
            kw = ESTIMATE_MODELS[name]
            model = demo_model if kw is None else build_dense(work / name, demo_model, kw)
            for precision, micro, length, gc, lora in settings:
                spec = {
                    "consumer": "train",
                    "name": name,
                    "model": str(model),
                    "data": str(data),
                    "device": device,
                    "epochs": 1,
                    "max_length": length,
                    "cfg": {
                        "precision": precision,
                        "micro_batch_size": micro,
                        "gradient_accumulation_steps": 1,
                        "gradient_checkpointing": gc,
                        "lora": {"enabled": lora, "dropout": 0.0},
                    },
                    "train": {"max_steps": 3},
                }
                res = run_worker(spec)
                measured = res["device_peak_mb"]
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "micro": micro,
                        "max_length": length,
                        "grad_ckpt": gc,
                        "lora": lora,
                        "predicted_mb": round(res["predicted_peak_mb"], 1),
                        "measured_mb": None if measured is None else round(measured, 1),
                        "measured/predicted": (
                            None if measured is None else round(measured / res["predicted_peak_mb"], 2)
                        ),
                    }
                )
                print(rows[-1], flush=True)
    print(f"\n## predicted vs measured training peak (device={device}; measured = torch.cuda.max_memory_allocated)")
    print(pd.DataFrame(rows).to_string(index=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 2 min)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument(
        "--consumer",
        default=None,
        choices=["loader", "train", "both"],
        help="what reads the batches (default: loader with --quick, both otherwise)",
    )
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, help="interleaved repeats per variant (default 1 quick, 3 full)")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads per subprocess (default: torch's choice); "
        "1 avoids OpenMP stalls on a shared, oversubscribed CPU box",
    )
    ap.add_argument("--estimate", action="store_true", help="predicted vs measured training peak")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("threads"):
            import torch

            torch.set_num_threads(spec["threads"])
        result = worker_loader(spec) if spec["consumer"] == "loader" else worker_train(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    args.consumer = args.consumer or ("loader" if args.quick else "both")
    t0 = time.perf_counter()
    if args.estimate:
        estimate_mode(args)
    else:
        loader_mode(args)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
