"""The whole chain on real English text in the three formats, with cross-format copies and ``$`` everywhere."""

import ast
import json
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.workflow import config_variant, snakemake

pytestmark = pytest.mark.slow

SYSTEM = "You are a careful assistant; prices are in $ and variables look like ${name}."
DOLLARS = [
    " It costs $5 (or $x^{$ in TeX).",
    " Set ${foo} and $HOME first.",
    " 100% of $\\alpha$ }{ $",
    " Emoji 🎉 and עברית text, $1 each.",
    "",
]


def docstrings(n: int) -> list[str]:
    """``n`` distinct docstrings of 20+ words from the standard library (real English, offline)."""
    out, seen = [], set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and (doc := ast.get_docstring(node)):
                text = " ".join(doc.split())
                if len(text.split()) >= 20 and text not in seen:
                    seen.add(text)
                    out.append(text)
                    if len(out) == n:
                        return out
    return out


def split(text: str, i: int) -> tuple[str, str]:
    cut = text.find(". ")
    cut = cut + 1 if 0 < cut < len(text) - 20 else len(text) // 2
    return text[:cut] + DOLLARS[i % 5], text[cut:].strip() + DOLLARS[(i + 2) % 5]


def write_pool(folder: Path) -> dict[str, tuple[str, str]]:
    """Three files; returns {copy id: id of the record it copies} for the cross-format copies."""
    docs = docstrings(300)
    pairs = [split(t, i) for i, t in enumerate(docs)]
    alpaca = [{"id": f"a{i}", "instruction": q, "input": "", "output": r} for i, (q, r) in enumerate(pairs[:120])]
    sharegpt = [
        {"id": f"g{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": r}]}
        for i, (q, r) in enumerate(pairs[120:210])
    ]
    messages = [
        {
            "id": f"m{i}",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": r},
            ],
        }
        for i, (q, r) in enumerate(pairs[210:])
    ]
    copies = {}
    for j in range(10):  # the same instruction and answer as an Alpaca record, with a system turn
        q, r = pairs[j]
        messages.append(
            {
                "id": f"m_copy{j}",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": r},
                ],
            }
        )
        copies[f"m_copy{j}"] = f"a{j}"
    for j in range(10, 16):  # a ShareGPT record of an Alpaca one, two words of its answer changed
        q, r = pairs[j]
        words = r.split()
        words[len(words) // 2] = "changed"
        words[1] = "altered"
        sharegpt.append(
            {
                "id": f"g_near{j}",
                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": " ".join(words)}],
            }
        )
        copies[f"g_near{j}"] = f"a{j}"
    for name, records in (("alpaca", alpaca), ("sharegpt", sharegpt), ("messages", messages)):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return copies


def test_real_text_in_three_formats_runs_to_the_report_and_finds_the_copies(tmp_path, demo_model):
    data = tmp_path / "data"
    data.mkdir()
    copies = write_pool(data)
    config = config_variant(
        "small",
        tmp_path,
        run="realtext",
        datasets={name: str(data / f"{name}.jsonl") for name in ("alpaca", "sharegpt", "messages")},
        model={"path": str(demo_model)},
        warmup={"enabled": False},
        shard_size=100,
        # perplexity: the tiny demo model does not know this text, so combined drops most of it as ifd>=1 and
        # few copies would reach the duplicate step
        selection={
            "selection_percentage": 0.1,
            "importance_selection_percentage": 0.5,
            "routing_strata": 4,
            "quality_method": "perplexity",
        },
    )
    settings = yaml.safe_load(config.read_text())
    settings["datasets"] = {name: str(data / f"{name}.jsonl") for name in ("alpaca", "sharegpt", "messages")}
    config.write_text(yaml.safe_dump(settings))  # config_variant merges sections: the demo dataset is out
    snakemake(tmp_path, "all", "report_figures", "--cores", "2", "--resources", "gpu=1", config=config)
    snakemake(tmp_path, "all", "report_figures", "--report", str(tmp_path / "report.html"), config=config)
    assert (tmp_path / "report.html").stat().st_size > 10_000
    sel = tmp_path / "results" / "realtext" / "selection"
    quality = pd.read_csv(sel / "quality.tsv", sep="\t", keep_default_na=False, dtype={"sample_id": str})
    reason = dict(zip(quality["sample_id"], quality["reason"]))
    similarity = dict(zip(quality["sample_id"], pd.to_numeric(quality["similarity"], errors="coerce")))
    # every copy is found: where both copies passed the quality filter, one is a duplicate of the other (the
    # better one stays); a copy with a system turn has other NLLs, so a quality check may drop it first
    quality_drop = {"no_response_tokens", "nonfinite", "ifd>=1", "repetitive", "unfinished"}
    kept = {"selected", "not_picked", "below_importance_cut"}
    linked = 0
    for copy, original in copies.items():
        pair = {reason[copy], reason[original]}
        assert not (reason[copy] in kept and reason[original] in kept), (copy, pair)
        if not pair & quality_drop:
            assert pair & {f"duplicate_of:{original}", f"duplicate_of:{copy}"}, (copy, pair)
            dropped = copy if reason[copy].startswith("duplicate_of:") else original
            assert (similarity[dropped] == 1.0) == copy.startswith("m_copy"), (copy, similarity[dropped])
            linked += 1
    assert linked >= 10, linked  # the others: a copy cut to no response token by max_length 128
    summary = pd.read_csv(sel / "selection_summary.tsv", sep="\t")
    assert summary["duplicates"].sum() >= 12 and summary["near_duplicates"].sum() >= 4
    assert not any(reason[c] == "selected" and reason[o] == "selected" for c, o in copies.items())
    for png in ("quality_histogram", "examples", "fps_curve"):
        assert (tmp_path / "results" / "realtext" / "report" / f"{png}.png").stat().st_size > 1000
