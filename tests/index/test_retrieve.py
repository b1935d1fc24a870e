"""Neighbour TSVs, decontamination, mean-pooled text embeddings and on-demand neighbour encoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from selectflow.data.records import read_dataset
from selectflow.index.build import build_windows
from selectflow.index.embed import encode_texts, load_encoder
from selectflow.index.retrieve import (
    OnDemandNeighbors,
    decontaminate,
    retrieve,
    write_table,
)
from selectflow.index.store import WindowStore
from selectflow.index.windows import item_windows
from selectflow.runtime.errors import SelectFlowError


def make_store(tmp_path, x, window_size, index_type="flat_l2", prefix="s"):
    ids = [f"{prefix}{i}" for i in range(len(x))]
    build_windows(
        lambda w, span: (x[span[0] : span[1]], ids[span[0] : span[1]]),
        item_windows(len(x), window_size),
        tmp_path / index_type,
        index_type=index_type,
        progress=False,
    )
    return WindowStore(tmp_path / index_type, max_open=2)


def test_retrieve_writes_ranked_neighbours(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    store = make_store(tmp_path, x, 90)
    q = x[[5, 250]] + 0.001
    table = retrieve(store, q, ["qa", "qb"], 4, progress=False)
    write_table(table, tmp_path / "neighbors.tsv")
    back = pd.read_csv(tmp_path / "neighbors.tsv", sep="\t", dtype={"sample_id": str, "query_id": str})
    assert list(back.columns) == ["query_id", "rank", "sample_id", "window", "distance"]
    assert back["query_id"].tolist() == ["qa"] * 4 + ["qb"] * 4 and back["rank"].tolist() == [1, 2, 3, 4] * 2
    assert back.loc[0, "sample_id"] == "s5" and back.loc[4, "sample_id"] == "s250" and back.loc[4, "window"] == 2
    d = ((x[None] - q[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(back["distance"].to_numpy().reshape(2, 4), np.sort(d, axis=1)[:, :4], rtol=1e-5)
    np.testing.assert_array_equal(
        back["distance"].to_numpy().astype(np.float32), table["distance"].to_numpy()
    )  # %.9g round-trips
    with pytest.raises(SelectFlowError, match="query ids repeat"):
        retrieve(store, q, ["qa", "qa"], 4, progress=False)


@pytest.mark.parametrize("index_type, threshold", [("flat_l2", 2.0), ("flat_l1", 2.0), ("flat_ip", 6.0)])
def test_decontaminate_finds_every_pair_within_threshold_inclusive(tmp_path, index_type, threshold):
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 3, size=(600, 4)).astype(np.float32)  # exact distances, thresholds attained
    evals = rng.integers(0, 3, size=(5, 4)).astype(np.float32)
    store = make_store(tmp_path, pool, 128, index_type)
    table = decontaminate(store, evals, [f"e{i}" for i in range(5)], threshold, progress=False)
    write_table(table, tmp_path / "contam.tsv")

    if index_type == "flat_l2":
        d, near = ((pool[None] - evals[:, None]) ** 2).sum(-1), None
    elif index_type == "flat_l1":
        d = np.abs(pool[None] - evals[:, None]).sum(-1)
    else:
        d = evals @ pool.T
    near = d >= threshold if index_type == "flat_ip" else d <= threshold
    assert (d == threshold).any()  # the boundary itself is exercised
    assert set(table["sample_id"]) == {f"s{j}" for j in np.nonzero(near.any(axis=0))[0]}
    back = pd.read_csv(tmp_path / "contam.tsv", sep="\t", dtype=str)
    assert list(back.columns) == ["sample_id", "eval_id", "distance", "window"]
    assert len(back) == int(near.sum())
    pairs = {(r.eval_id, r.sample_id) for r in back.itertuples()}
    assert pairs == {(f"e{i}", f"s{j}") for i, j in zip(*np.nonzero(near))}
    assert back["eval_id"].tolist() == sorted(back["eval_id"])  # grouped by eval sample


def test_decontaminate_with_nothing_near_writes_an_empty_table(tmp_path):
    pool = np.zeros((50, 3), np.float32)
    store = make_store(tmp_path, pool, 20)
    table = decontaminate(store, np.full((2, 3), 10, np.float32), ["a", "b"], 1.0, progress=False)
    assert table.empty and list(table.columns) == ["sample_id", "eval_id", "distance", "window"]
    write_table(table, tmp_path / "c.tsv")
    back = pd.read_csv(tmp_path / "c.tsv", sep="\t")
    assert back.empty and list(back.columns) == ["sample_id", "eval_id", "distance", "window"]


# ----------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def encoder(demo_model):
    return load_encoder(demo_model, "cpu")


@pytest.fixture(scope="module")
def pool_texts(demo_pool):
    return {r["sample_id"]: r["prompt"] + r["response"] for r in read_dataset(demo_pool, "demo")}


def test_mean_pooling_ignores_padding(encoder, pool_texts):
    model, tokenizer = encoder
    texts = sorted(pool_texts.values(), key=len)
    short, long_ = texts[0], texts[-1]
    assert len(tokenizer(short)["input_ids"]) < len(tokenizer(long_)["input_ids"]) / 2
    alone = encode_texts(model, tokenizer, [short], batch_size=1, max_length=512)
    padded = encode_texts(model, tokenizer, [long_, short, long_], batch_size=3, max_length=512)
    assert padded.dtype == np.float32 and padded.shape == (3, model.config.hidden_size)
    # Float32 on CPU: same text, same tokens, different batch width; 1e-5 covers kernel rounding.
    np.testing.assert_allclose(padded[1], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded[0], padded[2], rtol=1e-5, atol=1e-5)
    # the reference: plain mean over the unpadded sequence's last hidden state
    ids = torch.tensor([tokenizer(short)["input_ids"]])
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(alone[0], ref, rtol=1e-5, atol=1e-5)
    assert np.abs(padded[0] - padded[1]).max() > 1e-3  # different texts really differ


def test_causal_lm_and_encoder_give_the_same_vectors(demo_model, encoder, pool_texts):
    from transformers import AutoModelForCausalLM

    model, tokenizer = encoder
    causal = AutoModelForCausalLM.from_pretrained(demo_model).train()  # training mode is switched off and restored
    texts = list(pool_texts.values())[:20]
    np.testing.assert_allclose(
        encode_texts(causal, tokenizer, texts, batch_size=7, max_length=512),
        encode_texts(model, tokenizer, texts, batch_size=20, max_length=512),
        rtol=1e-5,
        atol=1e-5,
    )
    assert causal.training
    with pytest.raises(SelectFlowError, match="has no tokens"):
        encode_texts(model, tokenizer, ["a b", ""], batch_size=32, max_length=512)


def test_on_demand_neighbours_use_the_current_model(tmp_path, demo_model, encoder, pool_texts):
    from transformers import AutoModelForCausalLM

    _, tokenizer = encoder
    ids = list(pool_texts)[:120]
    x = np.random.default_rng(2).standard_normal((120, 16)).astype(np.float32)
    build_windows(
        lambda w, span: (x[span[0] : span[1]], ids[span[0] : span[1]]),
        item_windows(120, 40),
        tmp_path / "idx",
        progress=False,
        index_type="flat_l2",
    )
    store = WindowStore(tmp_path / "idx", max_open=1)
    neighbours = OnDemandNeighbors(store, pool_texts, tokenizer, k=3, batch_size=4, max_length=512)
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    batch_rows = [41, 45, 60]  # a training batch from window 1
    batch_ids = [ids[r] for r in batch_rows]

    first = neighbours(model, 1, x[batch_rows], batch_ids)
    assert store.stats()["open_windows"] == [1]
    assert first.embeddings.shape == (3, 3, model.config.hidden_size) and first.distances.shape == (3, 3)
    window_ids = set(ids[40:80])
    for own, row in zip(batch_ids, first.sample_ids):
        assert own not in row and set(row) <= window_ids  # self left out, only the batch's window
    _, expect = store.search_window(1, x[batch_rows], 4)
    assert first.sample_ids == [[s for s in row if s != own][:3] for own, row in zip(batch_ids, expect)]
    flat = [s for row in first.sample_ids for s in row]
    np.testing.assert_allclose(
        first.embeddings.reshape(9, -1),
        encode_texts(model, tokenizer, [pool_texts[s] for s in flat], batch_size=32, max_length=512),
        rtol=1e-5,
        atol=1e-5,
    )

    with torch.no_grad():  # an optimiser step: the next call must see the new weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    second = neighbours(model, 1, x[batch_rows], batch_ids)
    assert second.sample_ids == first.sample_ids
    np.testing.assert_allclose(
        second.embeddings.reshape(9, -1),
        encode_texts(model, tokenizer, [pool_texts[s] for s in flat], batch_size=32, max_length=512),
        rtol=1e-5,
        atol=1e-5,
    )
    assert np.abs(second.embeddings - first.embeddings).max() > 1e-2

    with pytest.raises(SelectFlowError, match="no text for sample id"):
        OnDemandNeighbors(store, {}, tokenizer, k=2, batch_size=32, max_length=512)(model, 0, x[:1])
