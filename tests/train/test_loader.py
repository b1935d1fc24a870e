"""Training data path: SFT encoding, step plan, device LRU cache, prefetch loader, presets, schema."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import FrozenInstanceError, asdict
from pathlib import Path

import pytest
import torch
import yaml

from selectflow.config import resolve_train_config
from selectflow.data.records import format_turns
from selectflow.presets import PRESETS
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.oom import attempt_size
from selectflow.schema import train_defaults
from selectflow.train.cache import DeviceCacheDataset
from selectflow.train.data import (
    IGNORE_INDEX,
    encode_pair,
    epoch_order,
    load_training_pairs,
    pad_collate,
    plan_steps,
    split_micro,
)
from selectflow.train.prefetch import PrefetchLoader
from selectflow.train.trainer import batch_split

SCHEMA = Path(__file__).resolve().parents[2] / "selectflow" / "schemas" / "train.schema.yaml"


class CharTokenizer:
    """One token per character (code point + 10); eos 1, pad 0."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(ch) + 10 for ch in text]}


def ids(text):
    return [ord(ch) + 10 for ch in text]


# --- encoding -------------------------------------------------------------------------


def test_encode_pair_masks_prompt_and_closes_response_with_eos():
    out = encode_pair(CharTokenizer(), "abc", "xy", max_length=64)
    assert out["input_ids"].dtype == torch.int32
    assert out["input_ids"].tolist() == ids("abc") + ids("xy") + [1]
    assert out["labels"].tolist() == [IGNORE_INDEX] * 3 + ids("xy") + [1]


def test_encode_pair_truncation_keeps_prompt_end_and_half_window_of_response():
    out = encode_pair(CharTokenizer(), "p" * 10 + "END", "r" * 20, max_length=16)
    tokens = out["input_ids"].tolist()
    assert len(tokens) == 16
    # response (20 + eos) keeps half the window: 8 tokens; the prompt keeps its last 8 characters
    assert tokens[:8] == ids("pppppEND")
    assert tokens[8:] == ids("r" * 8)
    assert (out["labels"] != IGNORE_INDEX).sum().item() == 8
    short = encode_pair(CharTokenizer(), "p" * 30, "ok", max_length=16)
    assert short["input_ids"].tolist()[-3:] == ids("ok") + [1]


def test_pad_collate_pads_right_with_mask_and_ignored_labels():
    items = [encode_pair(CharTokenizer(), "ab", "c", 32), encode_pair(CharTokenizer(), "a", "bcde", 32)]
    batch = pad_collate(items, pad_id=0)
    assert batch["input_ids"].shape == (2, 6) and batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"][0].tolist() == ids("abc") + [1, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX] + ids("c") + [1, IGNORE_INDEX, IGNORE_INDEX]


def test_load_training_pairs_reads_all_formats_mixed_in_one_file(tmp_path):
    lines = [
        {"id": "a1", "instruction": "Add 2 and 3.", "input": "", "output": "5", "sample_id": "a1"},
        {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}], "sample_id": "s1"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Red."},
            ],
            "sample_id": "m1",
        },
        {"sample_id": "n1", "dataset": "d", "line": 4, "prompt": "P", "response": "R", "record": {}},
    ]
    path = tmp_path / "selected_data.jsonl"
    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    pairs = load_training_pairs(path)
    assert pairs == [
        ("a1", format_turns([("user", "Add 2 and 3.")]), "5"),
        ("s1", format_turns([("user", "Hi?")]), "Hello."),
        ("m1", format_turns([("system", "Be brief."), ("user", "Name a colour.")]), "Red."),
        ("n1", "P", "R"),
    ]
    path.write_text(json.dumps(lines[0]) + "\n" + '{"instruction": "x", "output": 3}\n')
    with pytest.raises(SelectFlowError, match=r"selected_data.jsonl:2"):
        load_training_pairs(path)
    with pytest.raises(SelectFlowError, match="does not exist"):
        load_training_pairs(tmp_path / "missing.jsonl")


# --- step plan and attempt sizes -------------------------------------------------------


def test_plan_covers_each_sample_once_per_epoch_and_resumes_consistently():
    n, eff, seed = 23, 6, 7
    full = plan_steps({}, n, eff, seed, 0, 12)  # 4 steps per epoch (6, 6, 6, 5), 3 epochs
    assert [len(s) for s in full[:4]] == [6, 6, 6, 5]
    for e in range(3):
        epoch = [i for step in full[4 * e : 4 * e + 4] for i in step]
        assert sorted(epoch) == list(range(n))
        assert epoch == epoch_order(n, seed, e)
    assert epoch_order(n, seed, 0) != epoch_order(n, seed, 1)
    assert plan_steps({}, n, eff, seed, 5, 12) == full[5:]
    saved = {1: list(reversed(range(n)))}  # a resumed epoch uses its saved order
    assert plan_steps(saved, n, eff, seed, 5, 6) == [list(reversed(range(n)))[6:12]]
    step = full[0]
    assert split_micro(step, 4) == [step[:4], step[4:]]
    assert [i for mb in split_micro(step, 1) for i in mb] == step


@pytest.mark.parametrize(
    ("micro", "accum", "attempt", "expected"),
    [
        (4, 2, 1, (4, 2, 8)),
        (4, 2, 2, (2, 4, 8)),
        (4, 2, 3, (1, 8, 8)),
        (4, 2, 9, (1, 8, 8)),
        (3, 2, 2, (1, 6, 6)),
    ],
)
def test_batch_split_keeps_effective_batch_per_attempt(micro, accum, attempt, expected):
    c = resolve_train_config({"micro_batch_size": micro, "gradient_accumulation_steps": accum})
    assert batch_split(c, attempt_size(micro, attempt, 2)) == expected
    assert batch_split(c) == batch_split(c, micro)  # no resource: the configured micro-batch


# --- device cache ------------------------------------------------------------------------


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, n, length=10):
        self.n, self.length, self.calls = n, length, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls.append(i)
        t = torch.full((self.length,), i, dtype=torch.int32)
        return {"input_ids": t, "labels": t.clone()}


def test_device_cache_lru_hits_evictions_and_host_fallback():
    base = CountingDataset(10)
    cache = DeviceCacheDataset(base, torch.device("cpu"), max_items=3)
    for i in [0, 1, 2, 0, 3, 1, 4, 0]:
        assert cache[i]["input_ids"].tolist() == [i] * 10
    # hand trace (device tier, LRU first): 0 1 2 | hit 0 -> 1 2 0 | 3 evicts 1 | 1 from host evicts 2
    # | 4 evicts 0 | 0 from host evicts 3 -> device 1 4 0, host 2 3
    assert cache.stats() == {
        "device_hits": 1,
        "host_hits": 2,
        "misses": 5,
        "evictions": 4,
        "device_items": 3,
        "host_items": 2,
        "device_bytes": 3 * 80,
    }
    assert base.calls == [0, 1, 2, 3, 4]  # host hits are not recomputed


def test_device_cache_byte_budget_and_oversized_items():
    base = CountingDataset(6)  # 2 tensors x 10 int32 = 80 bytes per sample
    cache = DeviceCacheDataset(base, "cpu", max_items=100, max_bytes=200)
    for i in range(4):
        cache[i]
    s = cache.stats()
    assert (s["device_items"], s["device_bytes"], s["evictions"], s["host_items"]) == (2, 160, 2, 2)
    tiny = DeviceCacheDataset(CountingDataset(3), "cpu", max_items=5, max_bytes=50)
    for i in [0, 1, 0]:
        tiny[i]
    assert tiny.stats()["device_items"] == 0 and tiny.stats()["host_hits"] == 1 and tiny.stats()["misses"] == 2


# --- prefetch loader ---------------------------------------------------------------------


def batches(n):
    return [{"x": torch.full((2,), k)} for k in range(n)]


def test_prefetch_delivers_all_batches_in_order_and_stops():
    loader = PrefetchLoader(batches(25), torch.device("cpu"), prefetch_factor=3)
    out = [b["x"][0].item() for b in loader]
    assert out == list(range(25))
    assert not loader.alive


def test_prefetch_runs_ahead_but_is_bounded():
    produced = []

    def source():
        for b in batches(50):
            produced.append(b["x"][0].item())
            yield b

    with PrefetchLoader(source(), "cpu", prefetch_factor=2) as loader:
        it = iter(loader)
        next(it)
        time.sleep(0.3)  # the thread fills the queue while the consumer "computes"
        # one consumed + 2 queued + 1 produced and blocked on the full queue
        assert 3 <= len(produced) <= 4
        assert next(it)["x"][0].item() == 1
    assert not loader.alive


def test_prefetch_propagates_worker_exception_after_earlier_batches():
    def source():
        yield from batches(3)
        raise ValueError("bad record 3")

    got = []
    loader = PrefetchLoader(source(), "cpu", prefetch_factor=1)
    with pytest.raises(ValueError, match="bad record 3"):
        for b in loader:
            got.append(b["x"][0].item())
    assert got == [0, 1, 2]
    assert not loader.alive


def test_prefetch_early_exit_stops_thread_blocked_on_full_queue():
    before = threading.active_count()
    with PrefetchLoader(batches(100), "cpu", prefetch_factor=1) as loader:
        for b in loader:
            if b["x"][0].item() == 2:
                break
    assert not loader.alive
    assert threading.active_count() == before


# --- presets and schema --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "cache", "size", "prefetch", "factor", "workers"),
    [
        ("basic", True, 5000, False, 2, 0),
        ("prefetch", False, 0, True, 2, 0),
        ("combined", True, 3000, True, 2, 0),
        ("aggressive", True, 10000, True, 3, 0),
        ("minimal", True, 2000, True, 1, 0),
    ],
)
def test_presets_resolve_to_seed_values(preset, cache, size, prefetch, factor, workers):
    c = resolve_train_config({"preset": preset})
    assert (c.use_gpu_cache, c.gpu_cache_size, c.use_prefetch, c.prefetch_factor, c.num_workers) == (
        cache,
        size,
        prefetch,
        factor,
        workers,
    )
    assert c.pin_memory is (not cache)  # the seed: no pinned memory with the device cache
    assert c.micro_batch_size * c.gradient_accumulation_steps == 8


def test_user_keys_override_preset_and_nulls_do_not():
    c = resolve_train_config({"preset": "aggressive", "gpu_cache_size": 123, "prefetch_factor": None, "lora": {"r": 4}})
    assert c.gpu_cache_size == 123 and c.prefetch_factor == 3
    assert asdict(c.lora) == {**train_defaults()["lora"], "r": 4}
    minimal = resolve_train_config({"preset": "minimal"})
    assert (minimal.micro_batch_size, minimal.gradient_accumulation_steps) == (1, 8)
    plain = resolve_train_config({})
    assert (plain.use_gpu_cache, plain.use_prefetch, plain.micro_batch_size) == (False, False, 4)
    with pytest.raises(FrozenInstanceError):
        plain.seed = 1  # resolved once, read-only


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"preset": "turbo"}, "'train.preset' is 'turbo'"),
        ({"batch_size": 4}, "train.batch_size"),
        ({"lora": {"rank": 4}}, "train.lora.rank"),
        ({"micro_batch_size": 0}, "train.micro_batch_size"),
        ({"precision": "fp8"}, "train.precision"),
    ],
)
def test_bad_train_config_names_the_key(cfg, match):
    with pytest.raises(SelectFlowError, match=match):
        resolve_train_config(cfg)


def schema_defaults(node):
    if node.get("type") == "object" and "properties" in node:
        return {k: schema_defaults(v) for k, v in node["properties"].items()}
    return node["default"]


def test_schema_defaults_are_the_trainer_defaults_and_validate():
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    defaults = train_defaults()
    assert schema_defaults(schema) == defaults
    jsonschema.validate(defaults, schema)
    for name in PRESETS:
        jsonschema.validate({**defaults, "preset": name}, schema)
    # the resolved config is the schema's defaults, preset-controlled keys filled from the base
    resolved = asdict(resolve_train_config({}))
    assert {k: v for k, v in resolved.items() if defaults[k] is not None} == {
        k: v for k, v in defaults.items() if v is not None
    }

    def every_key_documented(node, where):
        for key, sub in node.get("properties", {}).items():
            assert "default" in sub and sub.get("description"), f"{where}.{key}"
            every_key_documented(sub, f"{where}.{key}")

    every_key_documented(schema, "train")
    # a config filled with the schema's defaults must not mask the preset
    filled = {**schema_defaults(schema), "preset": "minimal"}
    assert resolve_train_config(filled).gpu_cache_size == 2000
