"""Training-memory estimate: the formulas against hand-computed values, shapes against real models."""

from __future__ import annotations

import pytest
import torch

from selectflow.runtime.errors import EXIT_USER_ERROR, SelectFlowError
from selectflow.train.estimate import (
    ModelShape,
    estimate_training_memory,
    model_shape,
    parse_bytes,
    pick_micro_batch,
)

# n_params 1000 (800 in linear layers), h 8, 2 layers, V 10, kv 4, dense MLP width 16
DENSE = ModelShape(n_params=1000, n_linear_params=800, hidden=8, layers=2, vocab=10, kv_dim=4, intermediate=16)


def parts(est):
    return (est.parameters, est.autocast_copies, est.gradients, est.optimizer, est.activations, est.logits, est.total)


def test_dense_fp32_by_hand():
    # T = 2 x 5 = 10 tokens. a_layer = (6*8 + 2*4 + 4*16) * 4 + 4*8*4 = 480 + 128 = 608 bytes;
    # activations = 10 * (2*608 + 3*8*4) = 13120; logits = 10 * 10 * (4 + 8) = 1200
    est = estimate_training_memory(
        DENSE, micro_batch=2, max_length=5, precision="fp32", gradient_checkpointing=False, load_in_8bit=False
    )
    assert parts(est) == (4000, 0, 4000, 8000, 13120, 1200, 30320)


def test_dense_bf16_autocast_by_hand():
    # weights stay fp32 (+ a bf16 copy under autocast: 2000); a_layer = 120*2 + 128 = 368;
    # activations = 10 * (2*368 + 96) = 8320; logits = 100 * (2 + 4 + 8) = 1400
    est = estimate_training_memory(
        DENSE, micro_batch=2, max_length=5, precision="bf16", gradient_checkpointing=False, load_in_8bit=False
    )
    assert parts(est) == (4000, 2000, 4000, 8000, 8320, 1400, 27720)


def test_gradient_checkpointing_by_hand():
    # layer inputs 2 * 8 * 4 = 64, one recomputed layer 608, outside 96 -> 10 * 768
    est = estimate_training_memory(
        DENSE, micro_batch=2, max_length=5, precision="fp32", gradient_checkpointing=True, load_in_8bit=False
    )
    assert est.activations == 7680 and est.total == 24880


def test_lora_over_half_precision_base_by_hand():
    shape = ModelShape(**{**DENSE.__dict__, "lora_params": 100})
    # base bf16 2000 + adapters fp32 400; grads 400, AdamW 800; a_layer = 120*2 + 4*8*2 = 304;
    # activations = 10 * (2*304 + 3*8*2) = 6560; logits 1400
    est = estimate_training_memory(
        shape,
        micro_batch=2,
        max_length=5,
        precision="bf16",
        lora=True,
        gradient_checkpointing=False,
        load_in_8bit=False,
    )
    assert parts(est) == (2400, 0, 400, 800, 6560, 1400, 11560)
    # 8-bit: 800 int8 linear weights + 200 others upcast to fp32 (800) + adapters 400; autocast copies
    # of the 200 fp32 weights (400); fp32 residual: a_layer = 120*2 + 4*8*4 = 368 -> 10 * (2*368 + 96)
    est8 = estimate_training_memory(
        shape, micro_batch=2, max_length=5, precision="fp16", lora=True, load_in_8bit=True, gradient_checkpointing=False
    )
    assert parts(est8) == (2000, 400, 400, 800, 8320, 1400, 13320)


def test_moe_fp32_by_hand():
    shape = ModelShape(**{**DENSE.__dict__, "moe_intermediate": 6, "experts": 4, "top_k": 2})
    # m = 2*4*6 + 4 = 52; a_layer = (48 + 8 + 52)*4 + 4*8*4 + 2*2*8*4 = 432 + 128 + 128 = 688
    est = estimate_training_memory(
        shape, micro_batch=2, max_length=5, precision="fp32", gradient_checkpointing=False, load_in_8bit=False
    )
    assert est.activations == 10 * (2 * 688 + 96) == 14720
    assert est.total == 31920


def test_pick_micro_batch_is_largest_that_fits():
    # fp32, max_length 5: total(mb) = 16000 + 7160 * mb
    assert (
        estimate_training_memory(
            DENSE, micro_batch=3, max_length=5, gradient_checkpointing=False, load_in_8bit=False
        ).total
        == 16000 + 3 * 7160
    )
    kw = dict(max_length=5, precision="fp32", gradient_checkpointing=False, load_in_8bit=False)
    assert pick_micro_batch(DENSE, 16000 + 3 * 7160, upper=64, **kw) == 3
    assert pick_micro_batch(DENSE, 16000 + 3 * 7160 - 1, upper=64, **kw) == 2
    assert pick_micro_batch(DENSE, 10**9, upper=5, **kw) == 5
    with pytest.raises(SelectFlowError, match="gpu_memory_budget"):
        pick_micro_batch(DENSE, 16000 + 7159, upper=64, **kw)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("12GB", 12 * 10**9),
        ("12GiB", 12 * 2**30),
        ("800 MB", 800 * 10**6),
        ("1.5gib", 3 * 2**29),
        (4096, 4096),
        ("512", 512),
    ],
)
def test_parse_bytes(spec, expected):
    assert parse_bytes(spec) == expected


def test_parse_bytes_rejects_nonsense():
    with pytest.raises(SelectFlowError, match="12 parsecs"):
        parse_bytes("12 parsecs", "train.gpu_memory_budget")


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    from selectflow.data.demo import demo_model_config

    path = tmp_path_factory.mktemp("shape") / "model"
    demo_model_config(300, n_layers=2, n_experts=4, hidden=32).save_pretrained(path)
    return path


def test_model_shape_counts_match_the_instantiated_model(moe_folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    shape = model_shape(moe_folder, lora)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(moe_folder))
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    assert shape.n_linear_params == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head
    )
    assert (shape.hidden, shape.layers, shape.vocab, shape.experts, shape.top_k) == (32, 2, 300, 4, 2)
    assert shape.kv_dim == 2 * 8 and shape.moe_intermediate == 32
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # q_proj 32->32 and v_proj 32->16 per layer: r * (in + out)
    assert shape.lora_params == trainable == 2 * 4 * ((32 + 32) + (32 + 16))


def test_estimate_memory_cli_prints_the_estimate(moe_folder, capsys):
    from selectflow.cli import main

    assert (
        main(
            [
                "estimate-memory",
                "--model",
                str(moe_folder),
                "--micro-batch",
                "4",
                "--max-length",
                "64",
                "--precision",
                "bf16",
                "--budget",
                "1GB",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    est = estimate_training_memory(
        model_shape(moe_folder),
        micro_batch=4,
        max_length=64,
        precision="bf16",
        gradient_checkpointing=False,
        load_in_8bit=False,
    )
    assert f"total (predicted peak) {est.total}" in " ".join(out.split())
    assert "largest micro-batch that fits 1GB: " in out
    assert main(["estimate-memory", "--model", str(moe_folder.parent / "nope")]) == EXIT_USER_ERROR
    assert "cannot read a model config" in capsys.readouterr().err
