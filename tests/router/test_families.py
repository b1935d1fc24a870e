"""Every MoE causal-LM type of the installed transformers, and the checks on what the capture captures.

The type list is enumerated at collection time (:func:`moe_families`), not written here;
composite types (``llama4``, ``qwen3_5_moe``) included. Each type (about a minute for all on
one core): a tiny seeded model (≤ 4 layers, 8 experts, the demo tokenizer) dumps 20 demo
records of uneven length at the schema's ``router_dump`` defaults (batch 16, IFD on: one
batch is about 80 % padding), compared with each sample forwarded alone, router logits read
from the router weight's input in float64, the hidden-state means from ``output_hidden_states``
(:func:`selectflow.router.familycheck.reference`).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selectflow.data.tokens import encode_pair
from selectflow.router.dump import DumpSettings, RouterDumper
from selectflow.router.families import FAMILIES, suggest_pattern
from selectflow.router.familycheck import HIDDEN_TOLERANCE, TOLERANCE, check_family, reference
from selectflow.router.tinymoe import build_tiny, demo_inputs, expert_types, moe_families, not_causal_lm
from selectflow.runtime.errors import SelectFlowError

INSTALLED = moe_families()
MIN_CHECKED = 63  # of the 66 MoE causal-LM types in transformers 5.24 (all 66 pass there)
RESULTS: dict[str, str] = {}  # status per model type, of the per-family tests that ran in this session
#: types that zero the hidden states at padded positions: their router logits there are exact zeros
ZERO_PADDING = [
    "cohere2_moe",
    "granitemoehybrid",
    "jamba",
    "lara_mini",
    "qwen3_5_moe",
    "qwen3_5_moe_text",
    "qwen3_next",
]
COMPOSITE = ["llama4", "qwen3_5_moe", "qwen4_exp", "dots3_note"]


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
    return RouterDumper(
        model, tokenizer, DumpSettings(device="cpu", ifd=False, max_length=48, **settings), torch.device("cpu")
    )


@pytest.mark.parametrize("model_type", INSTALLED)
def test_family_dump_matches_per_sample_reference(inputs, model_type):
    tokenizer, records = inputs
    result = check_family(model_type, tokenizer, records)  # the schema's router_dump defaults
    RESULTS[model_type] = result.status
    if result.status == "skipped":
        pytest.skip(result.reason)
    assert result.status == "checked", result.reason
    assert result.max_error <= TOLERANCE and result.layers >= 1 and result.experts >= 8
    # the mean-pooled last hidden state (check_family turns it on) matched output_hidden_states of each sample alone
    assert result.hidden_error <= HIDDEN_TOLERANCE
    # batched families met a batch that is mostly padding (IFD pass included)
    assert result.capture.batch_dependent or result.padding >= 0.5, result.padding


def test_defaults_and_records_make_heavy_padding(inputs):
    """What the family test relies on: the schema's defaults and records of uneven length."""
    tokenizer, records = inputs
    settings = DumpSettings()
    assert settings.batch_size >= 16 and settings.ifd and settings.router_source == "auto"
    lengths = sorted(
        (len(encode_pair(tokenizer, r["prompt"], r["response"], settings.max_length)[0]) for r in records), reverse=True
    )
    first = lengths[: settings.batch_size]
    assert len(records) > settings.batch_size and 1 - sum(first) / (len(first) * first[0]) >= 0.5


@pytest.mark.parametrize("model_type", ZERO_PADDING)
def test_padding_rows_are_exact_zeros_and_not_checked(inputs, model_type):
    """The captured logits are exact zeros at padded positions; a dump that is mostly padding is still accepted."""
    tokenizer, records = inputs
    if model_type not in INSTALLED:
        pytest.skip(f"{model_type} not in this transformers")
    model = build_tiny(model_type, tokenizer)
    dumper = dumper_for(model, tokenizer)
    seqs = [encode_pair(tokenizer, r["prompt"], r["response"], 512)[0] for r in records[:1] + records[-7:]]
    _, mask, _, logits, _, _ = dumper._forward(seqs)
    pad = ~mask.reshape(-1).bool()
    assert pad.float().mean() > 0.5
    assert bool((logits[0][pad] == 0).all())  # the first MoE layer sees zeroed hidden states at the padding
    assert all(bool((x[~pad] != 0).all()) for x in logits)
    dumper.capture.verify()  # no CaptureError: the valid rows are logits
    # hooks on the suggested pattern (the old refusal's remedy) now capture the same routers
    hooks = dumper_for(model, tokenizer, router_source="hooks", router_pattern=suggest_pattern(model, 8))
    np.testing.assert_allclose(
        hooks.dump(records, batch_size=16, progress=False).moe_probs,
        dumper.dump(records, batch_size=16, progress=False).moe_probs,
        atol=1e-6,
    )


def test_enough_families_are_checked(inputs):
    """Counts the per-family tests' results; a family whose test did not run (this test alone) is checked here."""
    status = {t: RESULTS[t] if t in RESULTS else check_family(t, *inputs).status for t in INSTALLED}
    checked = sorted(t for t, s in status.items() if s == "checked")
    assert len(checked) >= min(MIN_CHECKED, len(INSTALLED) - 3), f"only {len(checked)} checked: {checked}"


def test_families_are_enumerated_not_listed():
    assert len(INSTALLED) >= 20 and {"mixtral", "qwen3_moe", "olmoe"} <= set(INSTALLED)
    assert "qwen3" not in INSTALLED and "llama" not in INSTALLED  # dense families are not MoE
    assert set(COMPOSITE) & set(expert_types()) <= set(INSTALLED)  # composite causal LMs are checked too


def test_every_family_table_row_can_be_reached():
    """A FAMILIES row is keyed by a model type AutoModelForCausalLM loads (or the text model type of one)."""
    from transformers import CONFIG_MAPPING

    reachable = set(INSTALLED)
    for model_type in INSTALLED:
        text = CONFIG_MAPPING[model_type]().to_dict().get("text_config")
        if isinstance(text, dict):
            reachable.add(text.get("model_type"))
    assert set(FAMILIES) <= reachable, set(FAMILIES) - reachable


def test_expert_types_that_are_not_causal_lms_have_a_reason():
    others = not_causal_lm()
    assert set(others) | set(INSTALLED) == set(expert_types()) and not set(others) & set(INSTALLED)
    assert {"switch_transformers", "glm4v_moe", "mistral4"} <= set(others)
    assert "seq-to-seq-causal-lm" in others["switch_transformers"] and "image-text-to-text" in others["glm4v_moe"]
    assert all(why and "not" in why or "no " in why for why in others.values()), others


def test_families_doc_lists_every_expert_type():
    """docs/families.md is regenerated with this transformers: every expert type appears, with its status."""
    doc = (Path(__file__).parents[2] / "docs" / "families.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", doc, re.M))
    assert set(rows) == set(expert_types())
    assert {t for t, status in rows.items() if status == "checked"} <= set(INSTALLED)
    checked = sum(status == "checked" for status in rows.values())
    assert f"**{checked} of those {len(INSTALLED)} are checked**" in doc


@pytest.mark.parametrize("model_type", ["glm4v_moe", "switch_transformers"])
def test_a_type_that_is_not_a_causal_lm_stops_before_any_job(tmp_path, model_type):
    """Preflight (Snakefile, before any job) and ``selectflow check`` name the type and what is supported."""
    from transformers import CONFIG_MAPPING

    from selectflow.data.check import model_type_problems
    from selectflow.data.preflight import preflight

    folder = tmp_path / "model"
    CONFIG_MAPPING[model_type]().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    config = {
        "datasets": {"d": str(data)},
        "model": {"path": str(folder)},
        "train": {"enabled": False},
        "index": {"enabled": False},
        "decontaminate": {},
        "selection": {"selection_percentage": 1.0},
    }
    with pytest.raises(
        SelectFlowError,
        match=rf"'model\.path' {re.escape(str(folder))}: .*model_type '{model_type}'"
        r".*not as a causal LM.*docs/families\.md",
    ):
        preflight(config, str(tmp_path / "results"))
    (problem,) = model_type_problems(config)
    assert model_type in problem and "causal LM" in problem
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"datasets": {"d": str(data)}, "model": {"path": str(folder)}}))
    proc = subprocess.run(
        [sys.executable, "-m", "selectflow", "check", "--configfile", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 2 and f"PROBLEM: 'model.path' {folder}" in proc.stdout, proc.stdout + proc.stderr
    json.dump({"model_type": "mixtral"}, open(folder / "config.json", "w"))
    assert model_type_problems(config) == []
    json.dump({"model_type": "no_such_moe"}, open(folder / "config.json", "w"))
    assert "does not know model_type 'no_such_moe'" in model_type_problems(config)[0]


def test_hooks_on_a_non_router_module_are_refused(inputs):
    tokenizer, _ = inputs
    model = build_tiny("qwen3_moe", tokenizer)
    with pytest.raises(
        SelectFlowError, match=r"model\.layers\.0\.post_attention_layernorm gave float32\[2, \d+, 64\]"
    ) as err:
        dumper_for(model, tokenizer, router_source="hooks", router_pattern=r"post_attention_layernorm$")
    assert "set router_dump.router_source: auto (tested on the same batch" in str(err.value)


def apply_remedy(message: str, settings: dict) -> dict:
    """The config change a refusal suggests, applied to ``settings``."""
    change = dict(settings)
    for key, value in re.findall(r"set router_dump\.(\w+): '?([^' ;()]+)'?", message):
        change[key] = int(value) if value.isdigit() else value
    if "lower router_dump.batch_size" in message:
        change["batch_size"] = 1
    assert change != settings, message
    return change


def test_suggested_pattern_leaves_out_attention_projections(inputs):
    """Qwen3-Next's linear_attn.in_proj_ba has as many rows as experts; it is not a router."""
    tokenizer, _ = inputs
    if "qwen3_next" not in INSTALLED:
        pytest.skip("qwen3_next not in this transformers")
    model = build_tiny("qwen3_next", tokenizer)
    assert any(n.endswith("linear_attn.in_proj_ba.weight") and p.shape[0] == 8 for n, p in model.named_parameters())
    assert suggest_pattern(model, 8) == r"(^|\.)(mlp\.gate)$"


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
def test_wrong_captures_are_refused_with_a_remedy_that_works(inputs, model_type, settings, message):
    tokenizer, records = inputs
    if model_type not in INSTALLED:
        pytest.skip(f"{model_type} not in this transformers")
    model = build_tiny(model_type, tokenizer)
    with pytest.raises(SelectFlowError, match=message) as err:
        dumper_for(model, tokenizer, **settings)
    assert "tested" in str(err.value) and "not tested" not in str(err.value)
    fixed = dumper_for(model, tokenizer, **apply_remedy(str(err.value), settings))
    assert fixed.capture.from_table  # here the remedy is the family table's capture
    shard = fixed.dump(records[:3], progress=False)
    for row, rec in enumerate(records[:3]):
        ids, _ = encode_pair(tokenizer, rec["prompt"], rec["response"], 48)
        np.testing.assert_allclose(
            shard.moe_probs[row], reference(model, ids, fixed.capture.score).probs, atol=TOLERANCE
        )


def test_a_capture_that_breaks_under_padding_is_told_to_lower_the_batch_size(inputs):
    """Routers whose logits collapse when the batch is padded (a fault put into a real model's routers):
    the refusal says to lower router_dump.batch_size, and batch 1 then dumps the reference values."""
    tokenizer, records = inputs
    model = build_tiny("qwen3_moe", tokenizer)
    padded = {}

    def note_padding(_m, _args, kwargs):
        padded["now"] = (
            bool((kwargs["attention_mask"] == 0).any()) if kwargs.get("attention_mask") is not None else False
        )

    def collapse(_m, _i, out):
        return (torch.zeros_like(out[0]), *out[1:]) if padded["now"] else out

    model.register_forward_pre_hook(note_padding, with_kwargs=True)
    for name, module in model.named_modules():
        if name.endswith("mlp.gate"):
            module.register_forward_hook(collapse)
    settings = dict(router_source="hooks", router_pattern=r"mlp\.gate$", batch_size=8)
    with pytest.raises(SelectFlowError, match=r"mostly exact zeros.*lower router_dump\.batch_size") as err:
        dumper_for(model, tokenizer, **settings)
    fixed = dumper_for(model, tokenizer, **apply_remedy(str(err.value), settings))
    shard = fixed.dump(records[:4], progress=False)
    for row, rec in enumerate(records[:4]):
        ids, _ = encode_pair(tokenizer, rec["prompt"], rec["response"], 48)
        np.testing.assert_allclose(shard.moe_probs[row], reference(model, ids, "softmax").probs, atol=TOLERANCE)


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
    from selectflow.router.routerfile import read_router_shard
    from selectflow.stages.router import dump_shard_file

    write_jsonl(tmp_path / "shard.jsonl", read_dataset(demo_pool, "demo")[:4])
    dump_shard_file(
        str(demo_model), str(tmp_path / "shard.jsonl"), str(tmp_path / "s.h5"), DumpSettings(device="cpu", batch_size=3)
    )
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
