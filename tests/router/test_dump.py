"""Router dump: values vs a direct forward pass, mask handling, architectures, hooks, gates."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from selectflow.data.records import read_dataset
from selectflow.data.tokens import encode_pair
from selectflow.router.dump import DumpSettings, RouterDumper
from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.errors import SelectFlowError

ATOL = 1e-5  # float32 on CPU: batched vs single forward differ only by summation order

ARCHS = {
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32
    ),
}


@pytest.fixture(scope="module")
def records(demo_pool):
    return read_dataset(demo_pool, "demo")[:12]


def save_arch(tmp_path, arch, tokenizer, layers=2):
    cfg = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **ARCHS[arch],
    )
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg)
    out = tmp_path / arch
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def reference(model, tokenizer, rec, max_length=256):
    """One sample alone, no padding: softmax router probs averaged over tokens, response NLL."""
    ids, n_prompt = encode_pair(tokenizer, rec["prompt"], rec["response"], max_length)
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=x, output_router_logits=True)
    probs = torch.stack([torch.softmax(r.float(), -1).mean(0) for r in out.router_logits]).numpy()
    logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
    nll = -logp[torch.arange(len(ids) - 1), x[0, 1:]]
    return probs, nll[n_prompt - 1 :].mean().item(), len(ids) - n_prompt


def test_dump_matches_direct_forward(demo_model, records):
    dumper = RouterDumper.from_path(str(demo_model), DumpSettings(batch_size=5, max_length=256, device="cpu"))
    shard = dumper.dump(records, progress=False)
    assert shard.moe_probs.shape == (len(records), 2, 8)
    assert list(shard.sample_id) == [r["sample_id"] for r in records]
    for row, rec in enumerate(records):
        probs, nll, n_resp = reference(dumper.model, dumper.tokenizer, rec)
        np.testing.assert_allclose(shard.moe_probs[row], probs, atol=ATOL)
        assert shard.n_response_tokens[row] == n_resp
        assert shard.nll_response[row] == pytest.approx(nll, abs=1e-4)
    np.testing.assert_allclose(shard.moe_probs.sum(-1), 1.0, atol=1e-5)
    assert np.isfinite(shard.nll_response_alone).all()


def test_padding_does_not_change_a_sample(demo_model, records):
    dumper = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu", sort_by_length=False))
    short = min(records, key=lambda r: len(r["prompt"] + r["response"]))
    alone = dumper.dump([short], batch_size=1, progress=False)
    mixed = dumper.dump(records + [short], batch_size=len(records) + 1, progress=False)
    np.testing.assert_allclose(mixed.moe_probs[-1], alone.moe_probs[0], atol=ATOL)
    assert mixed.nll_response[-1] == pytest.approx(alone.nll_response[0], abs=1e-4)


def test_batch_size_and_sorting_do_not_change_results(demo_model, records):
    a = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu")).dump(records, batch_size=1, progress=False)
    b = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu", sort_by_length=True)).dump(
        records, batch_size=7, progress=False
    )
    np.testing.assert_allclose(a.moe_probs, b.moe_probs, atol=ATOL)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architectures_dump_via_output_and_hooks(tmp_path, demo_model, records, arch):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    path = save_arch(tmp_path, arch, tokenizer)
    out = RouterDumper.from_path(str(path), DumpSettings(device="cpu", router_source="output")).dump(
        records, progress=False
    )
    hooked = RouterDumper.from_path(str(path), DumpSettings(device="cpu", router_source="hooks"))
    assert len(hooked.routers) == 2
    via_hooks = hooked.dump(records, progress=False)
    assert out.moe_probs.shape == (len(records), 2, 8)
    np.testing.assert_allclose(via_hooks.moe_probs, out.moe_probs, atol=1e-6)
    # routing carries information: samples are not all routed the same way
    assert out.moe_probs.std(axis=0).max() > 1e-3


def test_quality_gates_are_captured_by_name(demo_model, records):
    dumper = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu", quality_gate_pattern=r"quality_gate$"))
    torch.manual_seed(0)

    def run_gate(gate):
        # a Select-MoE model runs its gate inside the layer; here a hook runs it on the same input
        def hook(_module, _inputs, output):
            gate(output)

        return hook

    for layer in dumper.model.model.layers:
        layer.quality_gate = torch.nn.Linear(32, 2)
        layer.post_attention_layernorm.register_forward_hook(run_gate(layer.quality_gate))
    dumper.__init__(dumper.model, dumper.tokenizer, dumper.settings, dumper.device)
    assert len(dumper.quality_gates) == 2
    shard = dumper.dump(records[:3], batch_size=3, progress=False)
    assert shard.quality_logits.shape == (3, 2, 2)
    assert np.isfinite(shard.quality_logits).all() and np.abs(shard.quality_logits).sum() > 0


def test_dense_model_is_rejected(tmp_path, demo_model):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    cfg = AutoConfig.for_model(
        "qwen3",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    with pytest.raises(SelectFlowError, match="no MoE routers found"):
        RouterDumper.from_path(str(tmp_path / "dense"), DumpSettings(device="cpu"))


def test_shard_file_roundtrip(tmp_path, demo_model, demo_pool):
    from selectflow.data.records import write_jsonl
    from selectflow.stages.router import dump_shard_file

    shard_jsonl = tmp_path / "shard.jsonl"
    write_jsonl(shard_jsonl, read_dataset(demo_pool, "demo")[:6])
    assert dump_shard_file(str(demo_model), str(shard_jsonl), str(tmp_path / "s.h5"), DumpSettings(device="cpu")) == 6
    shard = read_router_shard(tmp_path / "s.h5")
    assert shard.attrs["layout_version"] == 1 and shard.attrs["model_path"] == str(demo_model)
    assert shard.moe_probs.dtype == np.float32 and len(shard.record) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "shard.jsonl"]


def test_a_target_set_of_several_formats_is_routed_as_each_record_alone(tmp_path, demo_model, demo_pool):
    """A held-out target slice of a pool of several formats (compare, eval heldout) is one file of mixed formats."""
    from selectflow.config import RouterDumpConfig, section
    from selectflow.data.records import write_jsonl
    from selectflow.schema import section_values
    from selectflow.stages.router import dump_target

    recs = read_dataset(demo_pool, "demo")[:3]
    (p0, r0), (p1, r1) = (recs[1]["prompt"], recs[1]["response"]), (recs[2]["prompt"], recs[2]["response"])
    written = [
        recs[0]["record"],
        {"id": "s1", "conversations": [{"from": "human", "value": p1}, {"from": "gpt", "value": r1}]},
        {"id": "m2", "messages": [{"role": "user", "content": p0}, {"role": "assistant", "content": r0}]},
    ]
    write_jsonl(tmp_path / "dev.jsonl", written)
    cfg = section(RouterDumpConfig, section_values("router_dump", {"device": "cpu"}))
    assert dump_target(str(demo_model), str(tmp_path / "dev.jsonl"), str(tmp_path / "t.h5"), cfg, 4) == 3
    alone = []
    for k, rec in enumerate(written):
        write_jsonl(tmp_path / f"one{k}.jsonl", [rec])
        dump_target(str(demo_model), str(tmp_path / f"one{k}.jsonl"), str(tmp_path / f"one{k}.h5"), cfg, 4)
        alone.append(read_router_shard(tmp_path / f"one{k}.h5").moe_probs)
    np.testing.assert_allclose(read_router_shard(tmp_path / "t.h5").moe_probs, np.concatenate(alone), atol=1e-5)


def masked_mean_last_hidden(model, tokenizer, recs, max_length=256):
    """[n, H]: one padded batch, ``output_hidden_states=True``, the last layer averaged over the attention mask."""
    seqs = [encode_pair(tokenizer, r["prompt"], r["response"], max_length)[0] for r in recs]
    ids = torch.full((len(seqs), max(map(len, seqs))), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(seqs):
        ids[row, : len(x)], mask[row, : len(x)] = torch.tensor(x), 1
    with torch.no_grad():
        last = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()
    m = mask.unsqueeze(-1).float()
    return ((last * m).sum(1) / m.sum(1)).numpy()


@pytest.mark.parametrize("arch", ["demo", "mixtral", "qwen2_moe"])
def test_hidden_states_are_the_masked_mean_of_the_last_layer(tmp_path, demo_model, records, arch):
    path = demo_model if arch == "demo" else save_arch(tmp_path, arch, AutoTokenizer.from_pretrained(demo_model))
    dumper = RouterDumper.from_path(
        str(path), DumpSettings(batch_size=5, max_length=256, device="cpu", hidden_states=True)
    )
    assert dumper.hidden_hook  # the decoder hook passed its check against output_hidden_states
    shard = dumper.dump(records, progress=False)
    want = masked_mean_last_hidden(dumper.model, dumper.tokenizer, records)
    assert shard.hidden.shape == (len(records), dumper.model.config.hidden_size) and shard.hidden.dtype == np.float32
    np.testing.assert_allclose(shard.hidden, want, atol=ATOL)
    assert np.abs(want).max() > 0.1 and want.std(axis=0).max() > 1e-2  # not all zeros, not all alike
    # the fallback (output_hidden_states in the same forward) gives the same vectors
    dumper.hidden_hook = []
    np.testing.assert_allclose(dumper.dump(records, progress=False).hidden, shard.hidden, atol=ATOL)


def test_hidden_states_off_and_in_the_shard_file(tmp_path, demo_model, records):
    from selectflow.router.routerfile import concat_shards, scan_shards, write_router_shard

    dumper = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu", max_length=128, hidden_states=True))
    shard = dumper.dump(records, progress=False)
    write_router_shard(tmp_path / "with.h5", shard)
    with h5py.File(tmp_path / "with.h5") as f:  # float16 on disk: H x 2 bytes a sample
        assert f["hidden"].dtype == np.float16 and f.attrs["hidden_size"] == shard.hidden.shape[1]
    back = read_router_shard(tmp_path / "with.h5")
    np.testing.assert_array_equal(back.hidden, shard.hidden.astype(np.float16).astype(np.float32))
    off = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu", max_length=128))  # the default: off
    plain = off.dump(records, progress=False)
    assert plain.hidden is None and not off.hidden_hook
    np.testing.assert_array_equal(plain.moe_probs, shard.moe_probs)  # the other values do not move
    write_router_shard(tmp_path / "without.h5", off.dump(records[:4], progress=False))
    assert read_router_shard(tmp_path / "without.h5").hidden is None
    # readers tolerate a pool where some shards lack them: no hidden for the pool, the rest as before
    write_router_shard(tmp_path / "with.h5", dumper.dump(records[4:], progress=False))
    paths = [tmp_path / "with.h5", tmp_path / "without.h5"]
    pool = concat_shards(paths)
    assert pool.hidden is None and len(pool) == len(records)
    np.testing.assert_allclose(np.sort(pool.moe_probs.ravel()), np.sort(shard.moe_probs.ravel()), atol=ATOL)
    assert sum(len(s) for _, s in scan_shards(paths)) == len(records)


def test_a_stored_shard_without_hidden_states_is_dumped_again_when_they_are_asked(tmp_path, demo_model, demo_pool):
    from selectflow.stages.router import dump_shard_group

    jsonls = _write_shards(tmp_path, demo_pool, [4])
    store = [str(tmp_path / "store" / "shard_00000.h5")]

    def reused(hidden_states):
        dump_shard_group(
            str(demo_model),
            jsonls,
            store,
            str(tmp_path / "g.tsv"),
            DumpSettings(device="cpu", max_length=64, hidden_states=hidden_states),
        )
        return (tmp_path / "g.tsv").read_text().splitlines()[1].split("\t")[3]

    assert reused(False) == "no" and read_router_shard(store[0]).hidden is None
    assert reused(True) == "no" and read_router_shard(store[0]).hidden is not None
    assert reused(False) == "yes" and reused(True) == "yes"  # a shard with them serves both


def _write_shards(folder, demo_pool, sizes):
    from selectflow.data.records import write_jsonl

    rows, paths = read_dataset(demo_pool, "demo"), []
    for k, n in enumerate(sizes):
        paths.append(str(folder / f"shard_{k:05d}.jsonl"))
        write_jsonl(paths[-1], rows[sum(sizes[:k]) : sum(sizes[:k]) + n])
    return paths


def test_shard_group_files_match_one_shard_per_job(tmp_path, demo_model, demo_pool):
    """One model load for a group writes the same bytes as one job per shard."""
    from selectflow.stages.router import dump_shard_file, dump_shard_group

    jsonls = _write_shards(tmp_path, demo_pool, [5, 7, 4])
    settings = DumpSettings(device="cpu", batch_size=4, max_length=128)
    store = [str(tmp_path / "store" / f"shard_{k:05d}.h5") for k in range(3)]
    assert dump_shard_group(str(demo_model), jsonls, store, str(tmp_path / "group.tsv"), settings) == 16
    for k, jsonl in enumerate(jsonls):
        single = tmp_path / "single" / f"shard_{k:05d}.h5"
        single.parent.mkdir(exist_ok=True)
        dump_shard_file(str(demo_model), jsonl, str(single), settings)
        assert single.read_bytes() == (tmp_path / "store" / single.name).read_bytes()
    table = (tmp_path / "group.tsv").read_text().splitlines()
    assert table[0] == "shard\tstore\tn_samples\treused" and [row.split("\t")[3] for row in table[1:]] == ["no"] * 3


def test_shard_group_reuses_only_valid_stored_shards(tmp_path, demo_model, demo_pool, caplog):
    """A rerun keeps a complete stored shard of the same model, settings and records; redoes the others."""
    import logging

    from selectflow.stages.router import dump_shard_group

    jsonls = _write_shards(tmp_path, demo_pool, [4, 4, 4])
    settings = DumpSettings(device="cpu", max_length=64)
    store = [str(tmp_path / "store" / f"shard_{k:05d}.h5") for k in range(3)]
    dump_shard_group(str(demo_model), jsonls, store, str(tmp_path / "g.tsv"), settings)
    inode = [Path(p).stat().st_ino for p in store]
    Path(store[1]).write_bytes(Path(store[1]).read_bytes()[:500])  # truncated, as by a crash mid-write elsewhere
    Path(store[2]).unlink()
    with caplog.at_level(logging.INFO, logger="selectflow.stages.router"):
        dump_shard_group(str(demo_model), jsonls, store, str(tmp_path / "g.tsv"), settings)
    assert Path(store[0]).stat().st_ino == inode[0]  # untouched
    assert Path(store[1]).stat().st_ino != inode[1] and len(read_router_shard(store[1])) == 4
    assert [row.split("\t")[3] for row in (tmp_path / "g.tsv").read_text().splitlines()[1:]] == ["yes", "no", "no"]
    assert "is not a readable HDF5 file" in caplog.text and "not dumped yet" in caplog.text
    # other settings (a digest change) or other records: nothing is reused
    dump_shard_group(str(demo_model), jsonls, store, str(tmp_path / "g.tsv"), DumpSettings(device="cpu", max_length=32))
    assert [row.split("\t")[3] for row in (tmp_path / "g.tsv").read_text().splitlines()[1:]] == ["no"] * 3
    _write_shards(tmp_path, demo_pool, [4, 5, 4])  # shard 1 gains a record, shard 2 shifts by one
    for path in jsonls:  # dated back: the sample ids alone decide (a newer shard file is always redone)
        os.utime(path, (1e9, 1e9))
    dump_shard_group(str(demo_model), jsonls, store, str(tmp_path / "g.tsv"), DumpSettings(device="cpu", max_length=32))
    assert [row.split("\t")[3] for row in (tmp_path / "g.tsv").read_text().splitlines()[1:]] == ["yes", "no", "no"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dump_matches_cpu(demo_model, records):
    cpu = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu", hidden_states=True)).dump(
        records, progress=False
    )
    before = torch.cuda.memory_allocated()
    fp32 = RouterDumper.from_path(str(demo_model), DumpSettings(device="cuda", dtype="float32", hidden_states=True))
    assert next(fp32.model.parameters()).is_cuda
    gpu = fp32.dump(records, progress=False)
    # TF32 matmuls may be on: tolerance of a few 1e-4 on probabilities
    np.testing.assert_allclose(gpu.moe_probs, cpu.moe_probs, atol=5e-4)
    np.testing.assert_allclose(gpu.nll_response, cpu.nll_response, rtol=1e-3)
    assert fp32.hidden_hook  # the decoder hook passes its check on CUDA too
    scale = np.abs(cpu.hidden).max()
    np.testing.assert_allclose(gpu.hidden, cpu.hidden, atol=1e-3 * scale)
    bf16 = RouterDumper.from_path(str(demo_model), DumpSettings(device="cuda", hidden_states=True))
    half = bf16.dump(records, progress=False)
    np.testing.assert_allclose(half.moe_probs, cpu.moe_probs, atol=3e-2)  # bf16 default
    np.testing.assert_allclose(half.hidden, cpu.hidden, atol=3e-2 * scale)
    bf16.close()
    # the job frees the model and the CUDA cache before it ends (the next rule needs the memory)
    import weakref

    model = weakref.ref(fp32.model)
    fp32.close()
    assert model() is None
    # what may stay allocated is a cuBLAS workspace (32 MiB on Hopper), not the model
    assert torch.cuda.memory_allocated() - before <= 32 * 2**20


def test_nll_eos_is_the_end_token_nll_after_the_response(demo_model, records):
    dumper = RouterDumper.from_path(str(demo_model), DumpSettings(device="cpu", max_length=256, ifd=False))
    recs = records[:6]
    shard = dumper.dump(recs, batch_size=4, progress=False)
    eos = dumper.tokenizer.eos_token_id
    for rec, got in zip(recs, shard.nll_eos):
        ids, _ = encode_pair(dumper.tokenizer, rec["prompt"], rec["response"], 256)
        assert ids[-1] == eos
        with torch.no_grad():
            logits = dumper.model(input_ids=torch.tensor([ids])).logits[0, -2].double()
        assert got == pytest.approx(float(-torch.log_softmax(logits, -1)[eos]), abs=1e-4)
    # cut by max_length: the end is not in the sequence, nothing to judge
    cut = RouterDumper(
        dumper.model, dumper.tokenizer, DumpSettings(device="cpu", max_length=8, ifd=False), dumper.device
    ).dump(recs[:2], progress=False)
    assert np.isnan(cut.nll_eos).all()


def test_dump_settings_take_every_dump_key_of_the_config_section():
    """Rule router_dump's settings: each key of the router_dump section, the job's batch size."""
    from selectflow.config import RouterDumpConfig
    from selectflow.stages.router import dump_settings

    cfg = RouterDumpConfig(
        batch_size=99,
        max_length=77,
        ifd=False,
        router_pattern="x$",
        router_source="hooks",
        softmax_logits=True,
        hidden_states=True,
        quality_gate_pattern="q$",
        device="cpu",
        dtype="float32",
        shards_per_job=3,
    )
    s = dump_settings(cfg, batch_size=5)
    assert s.batch_size == 5 and s.sort_by_length
    assert (
        s.max_length,
        s.ifd,
        s.router_pattern,
        s.router_source,
        s.softmax_logits,
        s.hidden_states,
        s.quality_gate_pattern,
        s.device,
        s.dtype,
    ) == (77, False, "x$", "hooks", True, True, "q$", "cpu", "float32")


def test_router_data_links_every_stored_shard_in_one_job(tmp_path):
    """Checkpoint router_data: hard links (same inode), the listing, a rerun that keeps them, a missing store file."""
    import pandas as pd

    from selectflow.stages.router import link_router_data

    store = tmp_path / "router_store" / "ds"
    store.mkdir(parents=True)
    manifests = []
    for first in (0, 2):  # two groups of two shards
        rows = []
        for k in (first, first + 1):
            (store / f"shard_{k:05d}.h5").write_bytes(bytes([k]) * (10 + k))
            rows.append((f"shard_{k:05d}", str(store / f"shard_{k:05d}.h5"), 10 + k, "no"))
        manifests.append(store / f"shard_{first:05d}.group.tsv")
        pd.DataFrame(rows, columns=["shard", "store", "n_samples", "reused"]).to_csv(
            manifests[-1], sep="\t", index=False
        )
    listing = tmp_path / "router_data" / "shards.tsv"
    assert link_router_data([str(m) for m in manifests], str(listing)) == 4
    linked = sorted((tmp_path / "router_data" / "ds").glob("*.h5"))
    assert [p.name for p in linked] == [f"shard_{k:05d}.h5" for k in range(4)]
    assert all(p.stat().st_ino == (store / p.name).stat().st_ino for p in linked)
    table = pd.read_csv(listing, sep="\t")
    assert table["path"].tolist() == [str(p) for p in linked] and table["n_samples"].tolist() == [10, 11, 12, 13]
    linked[1].unlink()  # a deleted link comes back; the others are left as they are
    link_router_data([str(m) for m in manifests], str(listing))
    assert linked[1].stat().st_ino == (store / linked[1].name).stat().st_ino
    (store / "shard_00003.h5").unlink()
    with pytest.raises(SelectFlowError, match=r"shard_00003\.h5, listed in .*shard_00002\.group\.tsv, is missing"):
        link_router_data([str(m) for m in manifests], str(listing))
