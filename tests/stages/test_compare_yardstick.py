"""The comparison's yardstick: the demo test set, its answer checkers, the student, the evaluation."""

import json

import pytest

from selectflow.data.demo import make_demo_pool
from selectflow.data.demotest import CHECKERS, TEST_KINDS, check_answer, make_demo_testset

# (kind, prompt, a right answer worded otherwise than the template, a wrong answer), written by hand
HAND = [
    ("arithmetic.add", "Add 23 and 45.", "The total is 68.", "23 plus 45 equals 168."),
    ("arithmetic.times", "What is 12 times 11?", "132", "12 multiplied by 11 is 121."),
    ("arithmetic.subtract", "Subtract 30 from 12.", "That leaves -18.", "12 minus 30 leaves 18."),
    ("arithmetic.subtract", "Subtract 5 from 40.", "40 - 5 = 35", "40 minus 5 leaves -35."),
    ("arithmetic.even", "Is 512 an even number?", "It is even.", "No, it is odd."),
    ("arithmetic.even", "Is 7 an even number?", "odd", "Yes it is even, not odd."),
    (
        "geography.trip",
        "Plan a 5-day trip to India.",
        "Five... no: 5 days, New Delhi first, then Asia.",
        "Spend 5 days in India: start in Delhi, then see more of Asia.",
    ),
    (
        "geography.trip",
        "Plan a 12-day trip to Peru.",
        "Spend 12 days in Peru: start in Lima, then see more of South America.",
        "Spend 12 days in Peru: start in Lima, then see more of Africa.",
    ),
    (
        "cooking.recipe",
        "Give a short recipe using lentils.",
        "Rinse the lentils and simmer 20 minutes with cumin.",
        "Wash the rice, cook it for 20 minutes with cumin.",
    ),
    ("cooking.boil", "How long should I boil eggs?", "Boil eggs about 9 minutes.", "Boil eggs until done."),
    ("programming.print", "Translate this to Python: print 604.", "print( 604 )", "print(60)"),
    (
        "programming.loop",
        "Write a loop that prints the numbers from 1 to 250.",
        "for n in range(1, 251):\n    print(n)",
        "for i in range(1, 250):\n    print(i)",
    ),
    (
        "animals.story",
        "Write a short story about a shy owl.",
        "A shy owl hunted mice in the forest.",
        "A shy owl lived in the desert and ate mice.",
    ),
    (
        "animals.zoo",
        "A zoo keeps 4 penguins. What do they need?",
        "An antarctic home and krill.",
        "They need a home like the ocean and food such as fish.",
    ),
]


@pytest.mark.parametrize("kind,prompt,right,wrong", HAND)
def test_each_checker_takes_a_right_answer_and_refuses_a_wrong_one(kind, prompt, right, wrong):
    assert check_answer(kind, prompt, right)
    assert not check_answer(kind, prompt, wrong)


def test_every_test_kind_has_a_checker_and_hand_written_examples():
    assert set(CHECKERS) == set(TEST_KINDS) == {kind for kind, *_ in HAND}


def _keys(records):
    from selectflow.report.yardstick import _text_key

    return {_text_key(r) for r in records}


def test_the_test_set_is_new_clean_seeded_and_covers_every_kind():
    pool = make_demo_pool(3000, seed=0)
    keys = _keys(pool)
    from selectflow.report.yardstick import _text_key

    test = make_demo_testset(20, seed=1, exclude=lambda r: _text_key(r) in keys)
    assert len(test) == 20 * len(TEST_KINDS)
    assert {r["kind"] for r in test} == set(TEST_KINDS)
    assert not _keys(test) & keys  # none is a pool record, compared on normalised text
    assert len(_keys(test)) == len(test)  # none alike
    assert not {r["id"] for r in test} & {r["id"] for r in pool}
    # clean: the generator's own answer passes its kind's checker
    assert all(check_answer(r["kind"], r["instruction"], r["output"]) for r in test)
    assert test == make_demo_testset(20, seed=1, exclude=lambda r: _text_key(r) in keys)
    assert test != make_demo_testset(20, seed=2, exclude=lambda r: _text_key(r) in keys)


def test_a_kind_that_cannot_give_enough_new_records_says_so():
    with pytest.raises(ValueError, match="arithmetic.even gave only"):
        make_demo_testset(
            5, seed=0, exclude=lambda r: r["instruction"] != "Is 8 an even number?", kinds=["arithmetic.even"]
        )


def test_the_scratch_student_weights_come_from_the_seed_alone(tmp_path):
    from selectflow.train.student import STUDENT_INFO, TOKENIZER_CORPUS, build_scratch_student

    kw = dict(seed=3, hidden=32, layers=1, vocab_size=400, max_positions=64)
    a = build_scratch_student(tmp_path / "a", **kw)
    b = build_scratch_student(tmp_path / "b", **kw)
    c = build_scratch_student(tmp_path / "c", **{**kw, "seed": 4})
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    info = json.loads((a / STUDENT_INFO).read_text())
    assert info["weights_trained_on"] == [] and info["tokenizer_trained_on"] == TOKENIZER_CORPUS


def test_evaluate_matches_a_record_by_record_reference(tmp_path):
    """Batched, left-padded greedy answers and per-kind losses equal those of one record at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    from selectflow.data.records import record_prompt_response, write_jsonl
    from selectflow.train.evaluate import evaluate
    from selectflow.train.student import build_scratch_student
    from selectflow.train.trainer import _tokenizer

    demo_model = build_scratch_student(
        tmp_path / "student", seed=0, hidden=32, layers=1, vocab_size=400, max_positions=128
    )

    rows = [
        {
            "instruction": f"Add {a} and {b}.",
            "input": "",
            "output": f"{a} plus {b} equals {a + b}.",
            "kind": "arithmetic.add",
        }
        for a, b in ((2, 3), (40, 51), (7, 9))
    ]
    rows += [{"instruction": "Describe something long " * 3, "input": "", "output": "words " * 9, "kind": "free"}]
    write_jsonl(tmp_path / "test.jsonl", rows)
    table = evaluate(demo_model, tmp_path / "test.jsonl", 128).set_index("kind")

    tokenizer, pad = _tokenizer(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model).eval()
    nll, tokens, correct = {}, {}, []
    for r in rows:
        prompt = record_prompt_response(r)[0]
        p = tokenizer(prompt)["input_ids"]
        full = p + tokenizer(r["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0, len(p) - 1 : -1]
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(full[len(p) :]), reduction="sum")
        nll[r["kind"]] = nll.get(r["kind"], 0.0) + float(loss)
        tokens[r["kind"]] = tokens.get(r["kind"], 0) + len(full) - len(p)
        if r["kind"] in CHECKERS:
            longest = max(len(tokenizer(x["output"], add_special_tokens=False)["input_ids"]) for x in rows[:3])
            with torch.no_grad():
                out = model.generate(
                    input_ids=torch.tensor([p]),
                    max_new_tokens=longest + 8,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                )
            correct.append(
                check_answer(r["kind"], r["instruction"], tokenizer.decode(out[0, len(p) :], skip_special_tokens=True))
            )
    for kind in ("arithmetic.add", "free"):
        assert table.at[kind, "tokens"] == tokens[kind]
        assert table.at[kind, "loss"] == pytest.approx(nll[kind] / tokens[kind], rel=1e-4)
    assert table.at["arithmetic.add", "accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert table.at["arithmetic.add", "n"] == 3 and table["accuracy"].isna().tolist() == [False, True]
