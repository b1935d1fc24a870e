"""Every MoE family of the installed transformers, and the checks on what the capture captures.

The family list is enumerated at collection time (:func:`moe_families`), not written here.
Each family (about 30 s for all on one core): a tiny seeded model (≤ 4 layers, 8 experts, the demo tokenizer), a batched
padded dump compared with each sample forwarded alone, router logits read from the router
weight's input in float64 (:func:`selectflow.router.familycheck.reference`).
"""

import numpy as np
import pytest
import torch

from selectflow.router.capture import FAMILIES
from selectflow.router.dump import DumpSettings, RouterDumper, encode_pair
from selectflow.router.familycheck import TOLERANCE, check_family, reference
from selectflow.router.tinymoe import build_tiny, demo_inputs, moe_families
from selectflow.runtime.errors import SelectFlowError

INSTALLED = moe_families()
MIN_CHECKED = 58  # of the 61 MoE families in transformers 5.24
RESULTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def inputs():
    return demo_inputs()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small only spin on intra-op threads (≈10x the CPU time on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dumper_for(model, tokenizer, **settings):
    return RouterDumper(model, tokenizer, DumpSettings(device="cpu", ifd=False, max_length=48, **settings),
                        torch.device("cpu"))


@pytest.mark.parametrize("model_type", INSTALLED)
def test_family_dump_matches_per_sample_reference(inputs, model_type):
    tokenizer, records = inputs
    result = check_family(model_type, tokenizer, records)
    RESULTS[model_type] = result.status
    if result.status == "skipped":
        pytest.skip(result.reason)
    assert result.status == "checked", result.reason
    assert result.max_error <= TOLERANCE and result.layers >= 1 and result.experts >= 8


def test_enough_families_are_checked():
    if set(RESULTS) != set(INSTALLED):
        pytest.skip("runs after the whole family parametrisation")
    checked = sorted(k for k, v in RESULTS.items() if v == "checked")
    assert len(checked) >= min(MIN_CHECKED, len(INSTALLED) - 3), f"only {len(checked)} checked: {checked}"


def test_families_are_enumerated_not_listed():
    assert len(INSTALLED) >= 20 and {"mixtral", "qwen3_moe", "olmoe"} <= set(INSTALLED)
    assert "qwen3" not in INSTALLED and "llama" not in INSTALLED  # dense families are not MoE
    unknown = set(FAMILIES) - set(INSTALLED)
    # table rows for families this transformers lacks are harmless, but most rows must be live
    assert len(unknown) <= len(FAMILIES) // 4, unknown


def test_hooks_on_a_non_router_module_are_refused(inputs):
    tokenizer, _ = inputs
    model = build_tiny("qwen3_moe", tokenizer)
    with pytest.raises(SelectFlowError, match=r"model\.layers\.0\.post_attention_layernorm gave float32\[2, \d+, 64\]") as err:
        dumper_for(model, tokenizer, router_source="hooks", router_pattern=r"post_attention_layernorm$")
    assert r"mlp\.gate" in str(err.value)  # the suggested router_pattern names the real routers


def test_hooks_matching_more_modules_than_moe_layers_are_refused(inputs):
    tokenizer, _ = inputs
    model = build_tiny("qwen3_moe", tokenizer)
    with pytest.raises(SelectFlowError, match="matches 8 modules .* has 4 MoE layers"):
        dumper_for(model, tokenizer, router_source="hooks", router_pattern=r"(q_proj|k_proj)$")


def test_hooks_pick_the_logits_out_of_a_router_tuple(inputs):
    """jetmoe's router returns (sort permutation, ..., logits): the int64 elements are never taken."""
    tokenizer, records = inputs
    if "jetmoe" not in INSTALLED:
        pytest.skip("jetmoe not in this transformers")
    model = build_tiny("jetmoe", tokenizer)
    table = dumper_for(model, tokenizer)
    assert table.capture.summary().startswith("routers via hooks on 4 modules (family table entry 'jetmoe')")
    generic = dumper_for(model, tokenizer, router_source="hooks", router_pattern=r"layers\.\d+\.mlp\.router$")
    a, b = table.dump(records[:3], progress=False), generic.dump(records[:3], progress=False)
    assert a.moe_probs.shape == (3, 4, 8)
    np.testing.assert_allclose(a.moe_probs, b.moe_probs, atol=1e-7)


#: captures that used to give plausible wrong numbers; each is now refused by a check
WRONG_CAPTURES = [
    ("llama4_text", dict(router_source="hooks", router_pattern=r"feed_forward\.router$"), "mostly exact zeros"),
    ("gemma4_text", dict(router_source="hooks", router_pattern=r"layers\.\d+\.router$"), "already sum to 1"),
    ("jetmoe", dict(router_source="output"), "8 router outputs for 4 layers"),
    ("deepseek_v4", dict(router_source="output"), "got 1 router outputs .* for 4 MoE layers"),
]


@pytest.mark.parametrize("model_type, settings, message", WRONG_CAPTURES, ids=[w[0] for w in WRONG_CAPTURES])
def test_wrong_captures_are_refused(inputs, model_type, settings, message):
    tokenizer, _ = inputs
    if model_type not in INSTALLED:
        pytest.skip(f"{model_type} not in this transformers")
    model = build_tiny(model_type, tokenizer)
    with pytest.raises(SelectFlowError, match=message):
        dumper_for(model, tokenizer, **settings)
    assert dumper_for(model, tokenizer).capture.from_table  # auto takes the family table's capture


def test_no_shard_is_written_from_a_failed_check(tmp_path, demo_model, demo_pool):
    from selectflow.data.records import read_dataset, write_jsonl
    from selectflow.stages.router import dump_shard_file

    write_jsonl(tmp_path / "shard.jsonl", read_dataset(demo_pool, "demo")[:4])
    bad = DumpSettings(device="cpu", router_source="hooks", router_pattern=r"post_attention_layernorm$")
    with pytest.raises(SelectFlowError, match="not router logits"):
        dump_shard_file(str(demo_model), str(tmp_path / "shard.jsonl"), str(tmp_path / "s.h5"), bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.jsonl"]


def test_shard_records_capture_and_batch_size(tmp_path, demo_model, demo_pool):
    from selectflow.data.records import read_dataset, write_jsonl
    from selectflow.stages.router import dump_shard_file
    from selectflow.router.routerfile import read_router_shard

    write_jsonl(tmp_path / "shard.jsonl", read_dataset(demo_pool, "demo")[:4])
    dump_shard_file(str(demo_model), str(tmp_path / "shard.jsonl"), str(tmp_path / "s.h5"),
                    DumpSettings(device="cpu", batch_size=3))
    attrs = read_router_shard(tmp_path / "s.h5").attrs
    assert attrs["batch_size"] == 3 and "output_router_logits" in attrs["router_capture"]  # 4 records: 3 + 1
    assert "score softmax" in attrs["router_capture"]


@pytest.mark.parametrize("model_type", ["deepseek_v3", "glm4_moe"])
def test_sigmoid_family_scores_and_softmax_logits_option(inputs, model_type):
    tokenizer, records = inputs
    if model_type not in INSTALLED:
        pytest.skip(f"{model_type} not in this transformers")
    model = build_tiny(model_type, tokenizer)
    routed = dumper_for(model, tokenizer).dump(records[:3], batch_size=3, progress=False)
    parity = dumper_for(model, tokenizer, softmax_logits=True).dump(records[:3], batch_size=3, progress=False)
    for row, rec in enumerate(records[:3]):
        ids, _ = encode_pair(tokenizer, rec["prompt"], rec["response"], 48)
        ref_sigmoid, ref_softmax = reference(model, ids, "sigmoid"), reference(model, ids, "softmax")
        np.testing.assert_allclose(routed.moe_probs[row], ref_sigmoid.probs, atol=TOLERANCE)
        np.testing.assert_allclose(parity.moe_probs[row], ref_softmax.probs, atol=TOLERANCE)
        # the model's own top-k weights agree with the sigmoid score, not with the softmax one
        assert ref_sigmoid.score_checked > 0 and ref_sigmoid.score_mismatch < 1e-6
        assert ref_softmax.score_mismatch > 1e-3
    assert np.abs(routed.moe_probs - parity.moe_probs).max() > 1e-3
    assert DumpSettings(softmax_logits=True).digest() != DumpSettings().digest()


def test_batch_dependent_family_is_dumped_one_sample_at_a_time(inputs):
    tokenizer, records = inputs
    if "glm_moe_dsa" not in INSTALLED:
        pytest.skip("glm_moe_dsa not in this transformers")
    dumper = dumper_for(build_tiny("glm_moe_dsa", tokenizer), tokenizer)
    assert dumper.capture.batch_dependent
    shard = dumper.dump(records[:4], batch_size=4, progress=False)
    assert dumper.effective_batch_size == 1 and shard.moe_probs.shape[0] == 4


def test_batch_size_does_not_change_a_batch_invariant_family(inputs):
    tokenizer, records = inputs
    dumper = dumper_for(build_tiny("qwen3_moe", tokenizer), tokenizer)
    assert not dumper.capture.batch_dependent
    one = dumper.dump(records, batch_size=1, progress=False)
    six = dumper.dump(records, batch_size=6, progress=False)
    np.testing.assert_allclose(one.moe_probs, six.moe_probs, atol=TOLERANCE)
