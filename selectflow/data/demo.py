"""The embedded default: a deterministic instruction pool and a tiny MoE causal LM.

* :func:`make_demo_pool` → Alpaca-style records (``id``, ``instruction``, ``input``,
  ``output``, ``topic``, ``planted``) over several topics, with planted near-duplicates
  and planted junk (``empty``, ``truncated``, ``repeated``, ``off_topic``), so that a
  selection has something to find.
* :func:`build_proxy_model` → the proxy scorer of any pool, the demo model being the proxy
  of the demo pool: a Qwen3-MoE causal LM (by default 4 layers, 8 experts, top-2; sizes in
  the config's ``proxy`` section) with seeded weights and a BPE tokenizer trained on the pool,
  then pre-trained on the whole pool (:func:`pretrain_demo_model`: a plain, seeded
  language-model fit of prompt + response + eos, on the CPU) so that, like a real pre-trained model, it
  predicts a clean response from its prompt and routes topics differently; saved with
  ``save_pretrained`` (safetensors) so it loads through the same ``from_pretrained``
  path as a real model. Nothing is downloaded. The pre-training reads only ``prompt``
  and ``response``: never the label fields ``planted``, ``topic``, ``duplicate_of``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from selectflow.runtime.fsutil import atomic_dir, atomic_open

log = logging.getLogger(__name__)

_TOPICS = {
    "arithmetic": [
        ("Add {a} and {b}.", "", "{a} plus {b} equals {s}."),
        ("What is {a} times {b}?", "", "{a} multiplied by {b} is {p}."),
        ("Subtract {b} from {a}.", "", "{a} minus {b} leaves {d}."),
        ("Is {a} an even number?", "", "{even}"),
    ],
    "geography": [
        ("What is the capital of {country}?", "", "The capital of {country} is {capital}."),
        ("Name the continent where {country} lies.", "", "{country} lies in {continent}."),
        (
            "Write one sentence about {country}.",
            "",
            "{country} is a country in {continent} whose capital is {capital}.",
        ),
        (
            "Plan a {a}-day trip to {country}.",
            "",
            "Spend {a} days in {country}: start in {capital}, then see more of {continent}.",
        ),
    ],
    "cooking": [
        (
            "Give a short recipe using {food}.",
            "",
            "Wash the {food}, cut it, cook it for {a} minutes with {spice}, then serve warm.",
        ),
        ("How long should I boil {food}?", "", "Boil {food} for about {a} minutes until tender."),
        ("Suggest a spice for {food}.", "", "Try {spice}; it goes well with {food}."),
    ],
    "programming": [
        ("Write a Python function that returns the {op} of two numbers.", "", "def {fn}(a, b):\n    return a {sym} b"),
        ("Explain what a {ds} is.", "", "A {ds} is a data structure that {dsdesc}."),
        ("Translate this to Python: print {a}.", "", "print({a})"),
        ("Write a loop that prints the numbers from 1 to {a}.", "", "for i in range(1, {a1}):\n    print(i)"),
    ],
    "animals": [
        ("Describe the {animal}.", "", "The {animal} is an animal that lives in the {habitat} and eats {diet}."),
        ("Where does the {animal} live?", "", "The {animal} lives in the {habitat}."),
        ("Classify the {animal}.", "It is found in the {habitat}.", "The {animal} is a {cls}."),
        (
            "Write a short story about a {adj} {animal}.",
            "",
            "Once a {adj} {animal} lived in the {habitat} and ate {diet} every day.",
        ),
        (
            "A zoo keeps {a} {animal}s. What do they need?",
            "",
            "The {a} {animal}s need a home like the {habitat} and food such as {diet}.",
        ),
    ],
}
_COUNTRIES = [
    ("France", "Paris", "Europe"),
    ("Japan", "Tokyo", "Asia"),
    ("Kenya", "Nairobi", "Africa"),
    ("Brazil", "Brasilia", "South America"),
    ("Canada", "Ottawa", "North America"),
    ("Egypt", "Cairo", "Africa"),
    ("India", "New Delhi", "Asia"),
    ("Italy", "Rome", "Europe"),
    ("Peru", "Lima", "South America"),
    ("Norway", "Oslo", "Europe"),
    ("Chile", "Santiago", "South America"),
    ("Ghana", "Accra", "Africa"),
    ("Mexico", "Mexico City", "North America"),
    ("Spain", "Madrid", "Europe"),
    ("Thailand", "Bangkok", "Asia"),
    ("Morocco", "Rabat", "Africa"),
    ("Cuba", "Havana", "North America"),
    ("Greece", "Athens", "Europe"),
    ("Vietnam", "Hanoi", "Asia"),
    ("Argentina", "Buenos Aires", "South America"),
]
_FOODS = ["rice", "potatoes", "carrots", "lentils", "pasta", "eggs", "spinach", "beans"]
_SPICES = ["cumin", "paprika", "black pepper", "turmeric", "basil", "garlic"]
_OPS = [("sum", "add", "+"), ("difference", "sub", "-"), ("product", "mul", "*"), ("quotient", "div", "/")]
_DS = [
    ("list", "keeps items in order"),
    ("dictionary", "maps keys to values"),
    ("set", "holds unique items"),
    ("queue", "serves items first in, first out"),
    ("stack", "serves items last in, first out"),
]
_ANIMALS = [
    ("fox", "forest", "small animals", "mammal"),
    ("eagle", "mountains", "fish and rodents", "bird"),
    ("shark", "ocean", "fish", "fish"),
    ("frog", "wetlands", "insects", "amphibian"),
    ("camel", "desert", "plants", "mammal"),
    ("penguin", "antarctic", "krill", "bird"),
    ("owl", "forest", "mice", "bird"),
    ("dolphin", "ocean", "fish", "mammal"),
    ("lizard", "desert", "insects", "reptile"),
    ("bear", "mountains", "berries and fish", "mammal"),
    ("turtle", "wetlands", "plants", "reptile"),
    ("zebra", "savanna", "grass", "mammal"),
]
_ADJECTIVES = ["brave", "sleepy", "hungry", "curious", "tiny", "old", "clever", "shy"]
_JUNK_WORDS = ["zorp", "qlax", "vemt", "krill", "blorb", "snarf", "wux", "pim"]


def _fill(rng: random.Random, topic: str) -> dict:
    return fill_template(rng, rng.choice(_TOPICS[topic]))


def fill_template(rng: random.Random, template: tuple[str, str, str], number_max: int = 99) -> dict:
    """One Alpaca record of ``template`` (instruction, input, output) with seeded values;
    the numbers ``a``, ``b`` are drawn from 2..``number_max``."""
    inst, inp, out = template
    a, b = rng.randint(2, number_max), rng.randint(2, number_max)
    country, capital, continent = rng.choice(_COUNTRIES)
    op, fn, sym = rng.choice(_OPS)
    ds, dsdesc = rng.choice(_DS)
    animal, habitat, diet, cls = rng.choice(_ANIMALS)
    values = dict(
        a=a,
        a1=a + 1,
        adj=rng.choice(_ADJECTIVES),
        b=b,
        s=a + b,
        p=a * b,
        d=a - b,
        even="Yes, it is even." if a % 2 == 0 else "No, it is odd.",
        country=country,
        capital=capital,
        continent=continent,
        food=rng.choice(_FOODS),
        spice=rng.choice(_SPICES),
        op=op,
        fn=fn,
        sym=sym,
        ds=ds,
        dsdesc=dsdesc,
        animal=animal,
        habitat=habitat,
        diet=diet,
        cls=cls,
    )
    return {"instruction": inst.format(**values), "input": inp.format(**values), "output": out.format(**values)}


def _junk(rng: random.Random, kind: str, base: dict) -> dict:
    if kind == "empty":
        return {"instruction": base["instruction"], "input": "", "output": ""}
    if kind == "truncated":
        out = base["output"]
        return {"instruction": base["instruction"], "input": base["input"], "output": out[: max(1, len(out) // 3)]}
    if kind == "repeated":
        word = rng.choice(base["output"].split() or ["the"])
        return {
            "instruction": base["instruction"],
            "input": base["input"],
            "output": " ".join([word] * rng.randint(20, 60)),
        }
    words = [rng.choice(_JUNK_WORDS) for _ in range(rng.randint(5, 15))]
    return {"instruction": " ".join(words[:4]).capitalize() + "?", "input": "", "output": " ".join(words)}


def _near_duplicate(rng: random.Random, rec: dict) -> dict:
    out = dict(rec)
    tweak = rng.choice(["lower", "punct", "space"])
    if tweak == "lower":
        out["instruction"] = rec["instruction"].lower()
    elif tweak == "punct":
        out["output"] = rec["output"].rstrip(".") + "!"
    else:
        out["instruction"] = rec["instruction"].replace(" ", "  ", 1)
    return out


def make_demo_pool(n_records: int, seed: int, near_dup_rate: float = 0.08, junk_rate: float = 0.1) -> list[dict]:
    """Return ``n_records`` deterministic Alpaca records; ``planted`` says what each one is.

    ``planted`` is ``clean``, ``near_duplicate`` (of the record named in ``duplicate_of``)
    or ``junk_<kind>``.
    """
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    records: list[dict] = []
    for i in range(n_records):
        roll = rng.random()
        topic = rng.choice(topics)
        if roll < junk_rate and records:
            kind = rng.choice(["empty", "truncated", "repeated", "off_topic"])
            rec = _junk(rng, kind, _fill(rng, topic))
            rec.update(topic="none" if kind == "off_topic" else topic, planted=f"junk_{kind}")
        elif roll < junk_rate + near_dup_rate and records:
            src = rng.choice([r for r in records[-200:] if r["planted"] == "clean"] or records)
            rec = _near_duplicate(rng, {k: src[k] for k in ("instruction", "input", "output")})
            rec.update(topic=src["topic"], planted="near_duplicate", duplicate_of=src["id"])
        else:
            rec = _fill(rng, topic)
            rec.update(topic=topic, planted="clean")
        records.append({"id": f"demo-{i:05d}", **rec})
    return records


def write_demo_pool(path: str | os.PathLike, n_records: int, seed: int) -> int:
    """Write :func:`make_demo_pool` as JSONL (atomically); return the record count."""
    records = make_demo_pool(n_records, seed)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(records)


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<unk>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def demo_model_config(vocab_size: int, *, n_layers: int, n_experts: int, hidden: int):
    """The tiny Qwen3-MoE config of the demo / proxy model (top-2 routing); sizes: the proxy section."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "qwen3_moe",
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        moe_intermediate_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        num_experts=n_experts,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


def pretrain_demo_model(
    model,
    tokenizer,
    texts: list[tuple[str, str]],
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    seed: int,
) -> list[float]:
    """Fit ``model`` to (prompt, response) pairs as a plain causal LM (every token, seeded order).

    AdamW with a linear decay to zero over ``epochs`` passes of shuffled batches; returns the
    loss per step. Deterministic for a given seed and thread count. Settings: the proxy section.
    """
    import torch

    from selectflow.data.tokens import encode_pair, pad_batch, pad_token_id

    seqs = [encode_pair(tokenizer, p, r, max_length)[0] for p, r in texts]
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, round(epochs * len(seqs) / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(seqs), generator=gen).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        ids, mask = pad_batch([seqs[i] for i in batch], pad_token_id(tokenizer))
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        if step % 50 == 0 or step == steps - 1:
            log.info("proxy pre-training step %d/%d: loss %.3f", step + 1, steps, losses[-1])
    model.eval()
    return losses


def build_proxy_model(out_dir: str | os.PathLike, pools: str | os.PathLike | list, **settings) -> Path:
    """The proxy scorer of a pool: train a tokenizer on it, build the seeded tiny MoE, pre-train it, save both.

    ``pools``: one JSONL file or a list of them (Alpaca, ShareGPT or messages, each detected),
    read in the order given. ``settings``: keys of the config's ``proxy`` section over its
    schema defaults (``seed``, ``vocab_size``, ``n_layers``, ``n_experts``, ``hidden``,
    ``pretrain_epochs`` — 0: random weights —, ``batch_size``, ``learning_rate``, ``max_length``).
    The demo model is this function on the demo pool. Reads only ``prompt`` and ``response``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from selectflow.config import ProxyConfig, section
    from selectflow.data.records import read_dataset
    from selectflow.schema import section_values

    cfg = section(ProxyConfig, section_values("proxy", settings))
    paths = [pools] if isinstance(pools, (str, os.PathLike)) else list(pools)
    records = [r for k, path in enumerate(paths) for r in read_dataset(path, f"pool{k}")]
    tokenizer = _train_tokenizer([r["prompt"] + r["response"] for r in records], cfg.vocab_size)
    config = demo_model_config(len(tokenizer), n_layers=cfg.n_layers, n_experts=cfg.n_experts, hidden=cfg.hidden)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    if cfg.pretrain_epochs > 0:
        pretrain_demo_model(
            model,
            tokenizer,
            [(r["prompt"], r["response"]) for r in records],
            epochs=cfg.pretrain_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            max_length=cfg.max_length,
            seed=cfg.seed,
        )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    log.info(
        "proxy model of %d records: %s, %d parameters, vocab %d -> %s",
        len(records),
        type(model).__name__,
        sum(p.numel() for p in model.parameters()),
        len(tokenizer),
        out_dir,
    )
    return Path(out_dir)
