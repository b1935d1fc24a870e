"""Input formats, sample ids, bad-record errors and sharding."""

import json

import pytest

from selectflow.data.records import read_dataset, read_jsonl, split_into_shards
from selectflow.runtime.errors import SelectFlowError


def write_lines(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_alpaca_with_ids(tmp_path):
    f = write_lines(
        tmp_path / "a.jsonl",
        [
            {"id": "x1", "instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"id": "x2", "instruction": "Name a fruit.", "input": "red one", "output": "apple"},
        ],
    )
    recs = read_dataset(f, "a")
    assert [r["sample_id"] for r in recs] == ["x1", "x2"]
    assert recs[0]["prompt"] == "### User:\nAdd 2 and 3.\n\n### Assistant:\n"
    assert "red one" in recs[1]["prompt"] and recs[1]["response"] == "apple"
    assert recs[1]["record"]["input"] == "red one"


def test_sharegpt_and_messages(tmp_path):
    sg = write_lines(
        tmp_path / "sg.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "be brief"},
                    {"from": "human", "value": "hi"},
                    {"from": "gpt", "value": "hello"},
                    {"from": "human", "value": "2+2?"},
                    {"from": "gpt", "value": "4"},
                ]
            },
        ],
    )
    msg = write_lines(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "capital of France?"},
                    {"role": "assistant", "content": "Paris"},
                ]
            },
        ],
    )
    (r1,), (r2,) = read_dataset(sg, "sg"), read_dataset(msg, "m")
    assert r1["response"] == "4" and "### Assistant:\nhello" in r1["prompt"] and r1["prompt"].startswith("### System:")
    assert r2["response"] == "Paris" and r2["prompt"] == "### User:\ncapital of France?\n\n### Assistant:\n"
    assert r1["sample_id"] == "sg:1" and r2["sample_id"] == "m:1"


def test_ids_repeated_fall_back_to_line_numbers(tmp_path):
    f = write_lines(
        tmp_path / "d.jsonl",
        [
            {"id": 1, "instruction": "a", "output": "b"},
            "",
            {"id": 1, "instruction": "c", "output": "d"},
        ],
    )
    assert [r["sample_id"] for r in read_dataset(f, "d")] == ["d:1", "d:3"]


@pytest.mark.parametrize(
    "lines, where, words",
    [
        ([{"instruction": "a", "output": "b"}, '{"instruction": "a", "output": '], ":2", "malformed JSON"),
        ([{"instruction": "a", "output": "b"}, {"instruction": "no response"}], ":2", "no 'output'"),
        ([{"messages": [{"role": "user", "content": "q"}]}], ":1", "no assistant turn"),
        ([{"conversations": [{"from": "gpt", "value": "a"}]}], ":1", "no user turn"),
        ([{"text": "plain"}], ":1", "no known format"),
        ([{"instruction": "a", "output": "b"}, {"messages": []}], ":2", "not in the file's format"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, lines, where, words):
    f = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(SelectFlowError) as info:
        read_dataset(f, "bad")
    assert f"{f}{where}" in str(info.value) and words in str(info.value)


def test_a_file_of_several_formats_is_read_record_by_record_when_asked(tmp_path):
    alpaca = {"id": "a", "instruction": "Say hi.", "output": "Hi."}
    sharegpt = {"id": "s", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    messages = {"id": "m", "messages": [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2."}]}
    mixed = write_lines(tmp_path / "mixed.jsonl", [alpaca, sharegpt, messages])
    with pytest.raises(SelectFlowError, match="mixed.jsonl:2: record is not in the file's format"):
        read_dataset(mixed, "d")
    got = read_dataset(mixed, "d", one_format=False)
    each = (alpaca, sharegpt, messages)
    alone = [read_dataset(write_lines(tmp_path / f"{r['id']}.jsonl", [r]), "d")[0] for r in each]
    assert [(r["sample_id"], r["prompt"], r["response"]) for r in got] == [
        (r["sample_id"], r["prompt"], r["response"]) for r in alone
    ]
    broken = write_lines(tmp_path / "broken.jsonl", [alpaca, {"conversations": [{"from": "gpt", "value": "a"}]}])
    with pytest.raises(SelectFlowError, match="broken.jsonl:2: .*no user turn"):
        read_dataset(broken, "d", one_format=False)


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(SelectFlowError, match="does not exist.*datasets.nope"):
        read_dataset(tmp_path / "missing.jsonl", "nope")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SelectFlowError, match="holds no records"):
        read_dataset(tmp_path / "empty.jsonl", "empty")


def test_split_into_shards(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(7)])
    paths = split_into_shards(f, "d", tmp_path / "shards", 3)
    assert [p.name for p in paths] == ["shard_00000.jsonl", "shard_00001.jsonl", "shard_00002.jsonl"]
    rows = [r for p in paths for r in read_jsonl(p)]
    assert [r["sample_id"] for r in rows] == [f"d:{i}" for i in range(1, 8)]
    assert sorted(x.name for x in (tmp_path / "shards").iterdir()) == [p.name for p in paths]
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []


def test_empty_system_prompt_is_dropped_but_empty_user_turn_is_an_error(tmp_path):
    f = write_lines(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": ""},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            },
            {
                "messages": [
                    {"role": "system", "content": None},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            },
        ],
    )
    recs = read_dataset(f, "m")
    assert [r["prompt"] for r in recs] == ["### User:\nhi\n\n### Assistant:\n"] * 2
    bad = write_lines(
        tmp_path / "b.jsonl",
        [
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "hello"}]},
        ],
    )
    with pytest.raises(SelectFlowError, match=r"b\.jsonl:1: .*turn 1 \(user\).* is empty"):
        read_dataset(bad, "b")
