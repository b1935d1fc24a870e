"""Select-MoE quality gate: conversion (stage 0), warm-up (stage 1), dump, save/load (CPU, tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from selectflow.data.records import read_dataset
from selectflow.router.dump import DumpSettings, RouterDumper
from selectflow.router.gate import (
    GATES_JSON,
    QualityGate,
    attach_gates,
    convert_model,
    find_moe_blocks,
    load_causal_lm,
    quality_gates,
    save_converted,
)
from selectflow.runtime.errors import SelectFlowError
from selectflow.schema import schema_default
from selectflow.select.pool import pool_of
from selectflow.select.quality import resolve_method
from selectflow.train.objective import (
    OBJECTIVES,
    GateObjective,
    forced_gates,
    masked_gate_loss,
    prompt_gain_targets,
    record_gate_logits,
)
from selectflow.train.trainer import fit


def gate_settings(**overrides) -> dict:
    """attach_gates / convert_model settings: the config's defaults (warmup, train.seed), ``overrides`` over them."""
    return {
        "trash": schema_default("warmup", "trash_expert"),
        "init_std": schema_default("warmup", "gate_init_std"),
        "seed": schema_default(None, "seed", "train.schema.yaml"),
        **overrides,
    }


FAMILIES = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16
    ),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
}
WARMUP = {
    "learning_rate": 5e-2,
    "max_length": 64,
    "save_every": 0,
    "warmup_ratio": 0.0,
    "device": "cpu",
    "micro_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "monitor_interval": 0,
}


def tiny(family: str, vocab: int = 64, seed: int = 1):
    cfg = AutoConfig.for_model(
        family,
        vocab_size=vocab,
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        **FAMILIES[family],
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def ids_and_mask(vocab: int = 64):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def records(demo_pool):
    return read_dataset(demo_pool, "demo")[:10]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forced_good_gives_the_base_logits_exactly(family):
    model = tiny(family)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        attach_gates(model, **gate_settings(seed=3))
        with forced_gates(model, 1.0):
            gated = model(input_ids=ids, attention_mask=mask).logits
        free = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(gated, base)
    assert not torch.allclose(free, base)  # unforced, the fresh gate (good ≈ 0.5) does change the output


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forced_bad_with_zero_trash_removes_the_moe(family):
    model = tiny(family)
    ids, mask = ids_and_mask()
    blocks = [block for _, block, _ in find_moe_blocks(model)]
    assert len(blocks) == 2
    with torch.no_grad():
        # reference: the same model with every MoE block replaced by "contributes nothing"
        originals = [b.forward for b in blocks]
        for b in blocks:
            b.forward = lambda x, *a, **k: torch.zeros_like(x)
        without_moe = model(input_ids=ids, attention_mask=mask).logits
        for b, f in zip(blocks, originals):
            b.forward = f
        attach_gates(model, **gate_settings(trash="zero"))
        outputs = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for b in blocks]
        with forced_gates(model, 0.0):
            gated = model(input_ids=ids, attention_mask=mask).logits
        for h in hooks:
            h.remove()
    assert len(outputs) == 2 and all(torch.count_nonzero(o) == 0 for o in outputs)
    assert torch.equal(gated, without_moe)


def test_noise_trash_adds_noise_in_training_only():
    model = tiny("qwen3_moe")
    ids, mask = ids_and_mask()
    attach_gates(model, **gate_settings(trash="noise"))
    block = find_moe_blocks(model)[0][1]
    out = []
    block.register_forward_hook(lambda _m, _i, o: out.append(o))
    with torch.no_grad():
        model.eval()
        with forced_gates(model, 0.0):
            model(input_ids=ids, attention_mask=mask)
        model.train()
        with forced_gates(model, 0.0):
            model(input_ids=ids, attention_mask=mask)
        with forced_gates(model, 1.0):
            model(input_ids=ids, attention_mask=mask)  # the MoE output itself (layer 0 sees the same input)
    zero_trash, noise, moe = out
    assert torch.count_nonzero(zero_trash) == 0  # eval: the trash's expectation, zero
    rms = noise.pow(2).mean().sqrt() / moe.pow(2).mean().sqrt()
    assert 0.7 < rms.item() < 1.4  # training: Gaussian noise at the MoE output's scale
    assert abs(torch.nn.functional.cosine_similarity(noise.flatten(), moe.flatten(), dim=0).item()) < 0.2


def test_gate_loss_ignores_padding():
    g = torch.Generator().manual_seed(0)
    valid = [torch.randn(2, 5, 2, generator=g) for _ in range(3)]  # 3 layers, 2 rows of 5 valid tokens
    mask5 = torch.ones(2, 5)
    loss = masked_gate_loss(valid, mask5)
    # the same tokens plus 4 padding positions whose gate logits say "good" loudly
    padded = [torch.cat([v, torch.tensor([30.0, -30.0]).expand(2, 4, 2)], dim=1) for v in valid]
    mask9 = torch.cat([mask5, torch.zeros(2, 4)], dim=1)
    assert torch.allclose(masked_gate_loss(padded, mask9), loss, atol=1e-7, rtol=0)
    # the reference's unmasked mean differs (so the mask is what makes them agree)
    unmasked = masked_gate_loss(padded, torch.ones(2, 9))
    assert unmasked.item() > loss.item() + 0.03
    # the value: layer mean of the token mean of sigmoid(softmax(logits)[..., 0])
    expected = torch.stack([torch.sigmoid(torch.softmax(v, -1)[..., 0]).mean() for v in valid]).mean()
    assert torch.allclose(loss, expected)


def _labelled_batch():
    """Three right-padded rows: prompt lengths 3, 2, 4; response (labelled) lengths 4, 3, 1; padding after."""
    ids, _ = ids_and_mask()
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for b, (p, r) in enumerate([(3, 4), (2, 3), (4, 1)]):
        mask[b, : p + r] = 1
        labels[b, p : p + r] = ids[b, p : p + r]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_response_tokens_penalty_counts_only_positions_that_predict_a_response_token():
    batch = _labelled_batch()
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(3, 9, 2, generator=g) for _ in range(2)]
    loss = GateObjective(2.0, objective="response_tokens").loss(logits, batch, n_valid=99, n_response=8)
    per_layer = []
    for x in logits:
        total = 0.0
        for b in range(3):
            for t in range(8):
                if batch["labels"][b, t + 1] != -100:
                    total += torch.sigmoid(torch.softmax(x[b, t], -1)[0])
        per_layer.append(total / 8)
    assert torch.allclose(loss, 2.0 * torch.stack(per_layer).mean(), atol=1e-6)
    # select_moe counts every valid token and divides by n_valid
    moe = GateObjective(2.0, objective="select_moe").loss(logits, batch, n_valid=20, n_response=8)
    assert torch.allclose(moe, 2.0 * masked_gate_loss(logits, batch["attention_mask"], 20))
    assert not torch.allclose(moe, loss)


def test_all_tokens_adds_the_prompt_tokens_lm_loss_to_the_penalty():
    batch = _labelled_batch()
    g = torch.Generator().manual_seed(2)
    gate = [torch.randn(3, 9, 2, generator=g) for _ in range(2)]
    logits = torch.randn(3, 9, 11, generator=g)
    batch["input_ids"] = batch["input_ids"] % 11
    loss = GateObjective(1.5, objective="all_tokens").loss(gate, batch, n_valid=20, n_response=8, logits=logits)
    prompt = 0.0
    for b, p in enumerate([3, 2, 4]):  # positions 0 .. p-2 predict prompt tokens 1 .. p-1
        for t in range(p - 1):
            prompt += torch.nn.functional.cross_entropy(logits[b, t], batch["input_ids"][b, t + 1])
    expected = 1.5 * masked_gate_loss(gate, batch["attention_mask"], 20) + prompt / 8
    assert torch.allclose(loss, expected, atol=1e-5)
    with pytest.raises(SelectFlowError, match="logits"):
        GateObjective(1.5, objective="all_tokens").loss(gate, batch, 20, 8)


def _row_nll(model, seq):
    logits = model(input_ids=torch.tensor([seq])).logits[0]
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="none")


def test_prompt_gain_targets_match_separate_unpadded_forwards():
    model = tiny("qwen3_moe")
    attach_gates(model, **gate_settings(init_std=0.5, seed=2))  # gates that change the output unless forced to good
    batch = _labelled_batch()
    with torch.no_grad():
        targets = prompt_gain_targets(model, batch)
        for b, (p, r) in enumerate([(3, 4), (2, 3), (4, 1)]):
            seq = batch["input_ids"][b, : p + r].tolist()
            with forced_gates(model, 1.0):
                with_prompt = _row_nll(model, seq)[p - 1 :]  # predicting the r response tokens
                alone = _row_nll(model, [seq[0]] + seq[p:])
            expected = (alone > with_prompt).float()
            assert torch.equal(targets[b, p - 1 : p + r - 1], expected)
            rest = torch.ones(9, dtype=torch.bool)
            rest[p - 1 : p + r - 1] = False
            assert torch.all(targets[b, rest] == 0.5)
    assert {0.0, 1.0} <= set(targets.unique().tolist())  # both kinds of token occur


def test_prompt_gain_loss_is_the_masked_cross_entropy_against_the_targets():
    batch = _labelled_batch()
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(3, 9, 2, generator=g) for _ in range(2)]
    targets = torch.rand(3, 9, generator=g).round()
    loss = GateObjective(0.5, objective="prompt_gain").loss(logits, batch, n_valid=17, n_response=8, targets=targets)
    per_layer = []
    for x in logits:
        p = torch.softmax(x, -1)[..., 0]
        bce = -(targets * p.log() + (1 - targets) * (1 - p).log())
        per_layer.append((bce * batch["attention_mask"]).sum() / 17)
    assert torch.allclose(loss, 0.5 * torch.stack(per_layer).mean(), atol=1e-5)
    with pytest.raises(SelectFlowError, match="targets"):
        GateObjective(0.5, objective="prompt_gain").loss(logits, batch, 17, 8)


def test_unknown_gate_objective_is_refused_and_the_objective_is_in_the_fingerprint():
    with pytest.raises(SelectFlowError, match="warmup.gate_objective"):
        GateObjective(1.0, objective="loss_gain")
    assert GateObjective(1.0).fingerprint()["gate_objective"] == "select_moe"  # the schema default
    assert GateObjective(1.0, objective="prompt_gain").fingerprint() != GateObjective(1.0).fingerprint()


def test_gate_loss_of_a_padded_batch_equals_the_unpadded_one():
    model = tiny("qwen3_moe")
    attach_gates(model, **gate_settings(init_std=0.5, seed=2))
    ids, _ = ids_and_mask()
    short = ids[:1, :5]
    padded = torch.cat([short, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 7)], dim=1).long()
    with torch.no_grad():
        with record_gate_logits(model) as a:
            model(input_ids=short, attention_mask=torch.ones_like(short))
        with record_gate_logits(model) as b:
            model(input_ids=padded, attention_mask=mask)
    assert len(a) == len(b) == 2
    assert torch.allclose(masked_gate_loss(b, mask), masked_gate_loss(a, torch.ones(1, 5)), atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_then_load_reproduces_the_converted_model(tmp_path, family):
    model = tiny(family)
    attach_gates(model, **gate_settings(init_std=0.3, seed=5))
    ids, mask = ids_and_mask()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    save_converted(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / GATES_JSON).read_text())
    assert [g["block"] for g in manifest["gates"]] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert {g["hidden_size"] for g in manifest["gates"]} == {24} and manifest["gates"][0]["trash"] == "zero"
    loaded = load_causal_lm(tmp_path / "m").eval()
    assert len(quality_gates(loaded)) == 2
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)
    # the base weights on disk are the base model's: plain from_pretrained loads them without gate keys
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not quality_gates(plain)
    for name, p in plain.named_parameters():
        assert torch.equal(p, model.get_parameter(name)), name


@pytest.fixture(scope="module")
def converted(tmp_path_factory, demo_model):
    out = tmp_path_factory.mktemp("converted") / "model"
    return convert_model(demo_model, out, **gate_settings(seed=0))


def test_convert_links_base_files_and_is_seeded(tmp_path, demo_model, converted):
    assert sorted(p.name for p in converted.iterdir()) == sorted(
        [p.name for p in demo_model.iterdir()] + ["quality_gates.json", "quality_gates.safetensors"]
    )
    again = convert_model(demo_model, tmp_path / "again", **gate_settings(seed=0))
    other = convert_model(demo_model, tmp_path / "other", **gate_settings(seed=1))
    a, b, c = (dict(quality_gates(load_causal_lm(p))) for p in (converted, again, other))
    assert all(torch.equal(a[k].weight, b[k].weight) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.quality_gate"].weight, c["model.layers.0.mlp.quality_gate"].weight)
    std = torch.cat([g.weight.flatten() for g in a.values()]).std().item()
    assert 0.012 < std < 0.03  # N(0, 0.02)
    # converting a converted model keeps its gates (e.g. a warm-up checkpoint given as model.path)
    twice = dict(quality_gates(load_causal_lm(convert_model(converted, tmp_path / "twice", **gate_settings(seed=1)))))
    assert all(torch.equal(a[k].weight, twice[k].weight) for k in a)
    with pytest.raises(SelectFlowError, match="already has a quality gate"):
        attach_gates(load_causal_lm(converted), **gate_settings())


def test_gates_of_another_model_are_refused(tmp_path, converted):
    manifest = json.loads((converted / GATES_JSON).read_text())
    manifest["gates"][0]["block"] = "model.layers.7.mlp"
    (tmp_path / "m").mkdir()
    for p in converted.iterdir():
        (tmp_path / "m" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "m" / GATES_JSON).write_text(json.dumps(manifest))
    with pytest.raises(SelectFlowError, match="model.layers.7.mlp.*another model"):
        load_causal_lm(tmp_path / "m")


def test_dense_model_cannot_be_converted():
    cfg = AutoConfig.for_model(
        "qwen3",
        vocab_size=64,
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with pytest.raises(SelectFlowError, match="no MoE routers found"):
        attach_gates(AutoModelForCausalLM.from_config(cfg), **gate_settings())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_convert_and_dump_write_quality_logits(tmp_path, demo_model, records, family):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = tiny(family, vocab=len(tokenizer))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    convert_model(tmp_path / "base", tmp_path / "converted", **gate_settings(init_std=0.5))
    dumper = RouterDumper.from_path(str(tmp_path / "converted"), DumpSettings(device="cpu", max_length=64))
    assert len(dumper.quality_gates) == 2
    shard = dumper.dump(records, batch_size=4, progress=False)
    assert shard.quality_logits.shape == (len(records), 2, 2)
    assert np.isfinite(shard.quality_logits).all() and shard.quality_logits.std(axis=0).max() > 1e-3
    # auto prefers combined where the dump has nll_response_alone (measured better), else the gate
    assert resolve_method(pool_of([(None, shard)], system_turns=False), "auto") == "combined"
    shard.nll_response_alone = None
    assert resolve_method(pool_of([(None, shard)], system_turns=False), "auto") == "gate"
    # the dumped value is the valid-token mean of the gate's logits on the block input
    rec = records[0]
    ids = dumper.tokenizer(rec["prompt"], add_special_tokens=False).input_ids
    ids = (ids + dumper.tokenizer(rec["response"], add_special_tokens=False).input_ids + [1])[:64]
    with torch.no_grad(), record_gate_logits(dumper.model) as logits:
        dumper.model(input_ids=torch.tensor([ids]))
    direct = torch.stack([x.reshape(-1, 2).mean(0) for x in logits]).numpy()
    np.testing.assert_allclose(shard.quality_logits[0], direct, atol=1e-5)
    # hook-based capture: a broad router pattern does not take the quality gates for routers
    hooked = RouterDumper.from_path(
        str(tmp_path / "converted"),
        DumpSettings(
            device="cpu", max_length=64, router_source="hooks", router_pattern=r"\.(quality_gate|gate|router)$"
        ),
    )
    assert [n for n, _ in hooked.routers] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    via_hooks = hooked.dump(records, batch_size=4, progress=False)
    np.testing.assert_allclose(via_hooks.moe_probs, shard.moe_probs, atol=1e-6)
    np.testing.assert_allclose(via_hooks.quality_logits, shard.quality_logits, atol=1e-6)
    # the base model has no gates: no quality logits, auto is not gate
    plain = RouterDumper.from_path(str(tmp_path / "base"), DumpSettings(device="cpu", max_length=64))
    assert plain.dump(records[:2], progress=False).quality_logits is None


def _params(path):
    return {n: p.detach().clone() for n, p in load_causal_lm(path).named_parameters()}


@pytest.mark.parametrize("gate_objective", OBJECTIVES)
def test_one_warmup_step_changes_only_gates_and_routers(tmp_path, converted, demo_pool, gate_objective):
    pairs = [(r["sample_id"], r["prompt"], r["response"]) for r in read_dataset(demo_pool, "demo")[:8]]
    objective = GateObjective(quality_loss_weight=1.0, objective=gate_objective)
    summary = fit(converted, pairs, tmp_path / "w", {**WARMUP, "max_steps": 1}, objective=objective)
    assert summary["steps"] == 1
    before, after = _params(converted), _params(tmp_path / "w" / "checkpoint")
    assert before.keys() == after.keys()
    trained = {n for n in before if not torch.equal(before[n], after[n])}
    gates = {n for n in before if n.endswith("quality_gate.weight")}
    routers = {n for n in before if n.endswith("mlp.gate.weight")}
    assert len(gates) == len(routers) == 2
    assert trained == gates | routers
    metrics = (tmp_path / "w" / "metrics.tsv").read_text().splitlines()
    assert metrics[0].split("\t")[-2:] == ["quality_loss", "p_good"]


def test_warmup_resumes_to_the_uninterrupted_result(tmp_path, converted, demo_pool):
    pairs = [(r["sample_id"], r["prompt"], r["response"]) for r in read_dataset(demo_pool, "demo")[:16]]
    cfg = {**WARMUP, "max_steps": 4, "save_every": 1}
    fit(converted, pairs, tmp_path / "whole", cfg, objective=GateObjective(1.0))

    def crash(step):
        if step == 2:
            raise RuntimeError("simulated failure after step 2")

    with pytest.raises(RuntimeError, match="simulated"):
        fit(converted, pairs, tmp_path / "cut", cfg, objective=GateObjective(1.0), on_step=crash)
    summary = fit(converted, pairs, tmp_path / "cut", cfg, objective=GateObjective(1.0), micro_batch_size=2, attempt=2)
    assert summary["resumed_from_step"] == 2 and summary["micro_batch_size"] == 2
    whole, cut = _params(tmp_path / "whole" / "checkpoint"), _params(tmp_path / "cut" / "checkpoint")
    assert max((whole[k] - cut[k]).abs().max().item() for k in whole) < 1e-5


def test_warmup_needs_a_converted_model_and_no_lora(tmp_path, demo_model, converted):
    pairs = [("a", "Add 2 and 3.", "5")]
    with pytest.raises(SelectFlowError, match="no quality gates"):
        fit(demo_model, pairs, tmp_path / "a", {**WARMUP, "max_steps": 1}, objective=GateObjective(1.0))
    with pytest.raises(SelectFlowError, match="lora.enabled: false"):
        fit(
            converted,
            pairs,
            tmp_path / "b",
            {**WARMUP, "max_steps": 1, "lora": {"enabled": True}},
            objective=GateObjective(1.0),
        )


def test_gate_is_a_bias_free_linear_to_two():
    gate = QualityGate(16, "zero")
    assert isinstance(gate, torch.nn.Linear) and gate.bias is None and tuple(gate.weight.shape) == (2, 16)
    with pytest.raises(SelectFlowError, match="trash expert 'bin'"):
        QualityGate(16, "bin")


def test_bf16_warmup_and_dump_run(tmp_path, converted, demo_pool, records):
    """Half precision (the GPU default), here on the CPU: bf16 autocast in the warm-up, bf16 weights in the dump."""
    pairs = [(r["sample_id"], r["prompt"], r["response"]) for r in read_dataset(demo_pool, "demo")[:8]]
    summary = fit(
        converted, pairs, tmp_path / "w", {**WARMUP, "max_steps": 2, "precision": "bf16"}, objective=GateObjective(1.0)
    )
    assert np.isfinite(summary["final_loss"])
    dumper = RouterDumper.from_path(
        str(tmp_path / "w" / "checkpoint"), DumpSettings(device="cpu", dtype="bfloat16", max_length=64)
    )
    assert {g.weight.dtype for _, g in dumper.quality_gates} == {torch.bfloat16}
    shard = dumper.dump(records[:4], progress=False)
    assert shard.quality_logits.shape == (4, 2, 2) and np.isfinite(shard.quality_logits).all()
