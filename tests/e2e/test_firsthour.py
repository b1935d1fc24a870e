"""What a new user meets first: the CLI's errors, version and flag aliases, the data check,
the end-of-run summary, quiet job logs and the index stage's grouped embedding."""

import json
import logging
import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from selectflow import __version__, cli, cliargs
from selectflow.data.check import check_config, render
from selectflow.layout import Layout
from selectflow.report.summary import logged_messages, run_summary, selection_counts
from selectflow.runtime.errors import EXIT_USER_ERROR
from selectflow.schema import load_config, schema, with_defaults
from tests.stages.test_select import make_pool, write_shards
from tests.workflow import REPO

# ----------------------------------------------------------------------------- CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "selectflow", *args], capture_output=True, text=True, cwd=REPO)


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"selectflow {__version__}"


def test_unknown_command_is_an_error_listing_the_commands():
    proc = run_cli("selct")
    assert proc.returncode == 2
    assert "unknown command 'selct'" in proc.stderr
    for name in cli.COMMANDS:
        assert name in proc.stderr
    assert run_cli().returncode == 2
    helped = run_cli("--help")
    assert helped.returncode == 0 and "continue-selection" in helped.stdout


def test_help_imports_nothing_heavy():
    heavy = ("torch", "transformers", "pandas", "numpy", "faiss", "h5py")
    code = (
        "import sys; from selectflow.cli import main; main(['--help']); "
        f"print(sorted(m for m in sys.modules if m in {heavy}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "argv, sep, expected",
    [
        (["--router_data_dir", "a_b", "--output-path=x_y"], "_", ["--router_data_dir", "a_b", "--output_path=x_y"]),
        (["--router-data-dir", "a-b"], "_", ["--router_data_dir", "a-b"]),
        (["--n_records", "5", "--max_length=3", "-h"], "-", ["--n-records", "5", "--max-length=3", "-h"]),
    ],
)
def test_flag_aliases(argv, sep, expected):
    assert cliargs.normalise_flags(argv, sep) == expected


def _selection(out):
    return [json.loads(line) for line in open(out)], open(out.with_name("fps_curve.tsv")).read()


def test_continue_selection_takes_dashed_flags_and_the_schema_defaults(tmp_path):
    pool = make_pool(seed=3)
    write_shards(pool, tmp_path / "router_data", seed=1)
    dashed, seed_style = tmp_path / "a" / "selected_data.jsonl", tmp_path / "b" / "selected_data.jsonl"
    # no --selection-percentage: the schema's default (0.05) applies
    assert (
        cli.main(
            [
                "continue-selection",
                "--router-data-dir",
                str(tmp_path / "router_data"),
                "--output-path",
                str(dashed),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    schema = yaml.safe_load((REPO / "selectflow" / "schemas" / "config.schema.yaml").read_text())
    default = schema["properties"]["selection"]["properties"]["selection_percentage"]["default"]
    assert (
        cli.main(
            [
                "continue-selection",
                "--router_data_dir",
                str(tmp_path / "router_data"),
                "--output_path",
                str(seed_style),
                "--device",
                "cpu",
                "--selection_percentage",
                str(default),
            ]
        )
        == 0
    )
    assert _selection(dashed) == _selection(seed_style)
    assert len(_selection(dashed)[0]) >= 1


def test_continue_selection_configfile_uses_the_workflow_settings(tmp_path):
    pool = make_pool(seed=4)
    write_shards(pool, tmp_path / "router_data", seed=2)
    config = {
        "datasets": {"x": "x.jsonl"},
        "model": {"path": "m"},
        "selection": {
            "selection_percentage": 0.2,
            "importance_selection_percentage": 0.5,
            "quality_method": "perplexity",
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    from_config, explicit = tmp_path / "a" / "selected_data.jsonl", tmp_path / "b" / "selected_data.jsonl"
    base = ["continue-selection", "--router-data-dir", str(tmp_path / "router_data"), "--device", "cpu"]
    assert cli.main(base + ["--configfile", str(tmp_path / "c.yaml"), "--output-path", str(from_config)]) == 0
    assert (
        cli.main(
            base
            + [
                "--output-path",
                str(explicit),
                "--selection-percentage",
                "0.2",
                "--importance-selection-percentage",
                "0.5",
                "--quality-method",
                "perplexity",
            ]
        )
        == 0
    )
    assert _selection(from_config) == _selection(explicit)
    assert len(_selection(from_config)[0]) == round(0.2 * len(pool))
    # a flag after --configfile wins
    assert (
        cli.main(
            base
            + [
                "--configfile",
                str(tmp_path / "c.yaml"),
                "--output-path",
                str(explicit),
                "--selection-percentage",
                "0.1",
            ]
        )
        == 0
    )
    assert len(_selection(explicit)[0]) == round(0.1 * len(pool))


@pytest.mark.parametrize(
    "command, flags, key",
    [
        (
            "continue-selection",
            ["--router-data-dir", "r", "--output-path", "o", "--selection-percentage", "5"],
            "'selection.selection_percentage' is 5.0, it must be at most 1",
        ),
        (
            "continue-selection",
            ["--router-data-dir", "r", "--output-path", "o", "--routing-strata", "0"],
            "'selection.routing_strata' is 0, it must be at least",
        ),
        ("estimate-memory", ["--model", "m", "--lora-r", "0"], "'train.lora.r' is 0, it must be at least 1"),
        (
            "estimate-memory",
            ["--model", "m", "--micro-batch", "0"],
            "'train.micro_batch_size' is 0, it must be at least 1",
        ),
    ],
)
def test_cli_flags_that_are_config_keys_are_checked_against_the_schema(command, flags, key, capsys, tmp_path):
    # checked before anything runs: no folder r, no model m is looked at
    assert cli.main([command, *flags]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"{command} flags: 1 config mistake" in err and key in err, err


def test_continue_selection_defaults_come_from_the_schema(capsys):
    sel = yaml.safe_load((REPO / "selectflow" / "schemas" / "config.schema.yaml").read_text())["properties"][
        "selection"
    ]["properties"]
    args = cliargs.continue_selection_parser(cliargs.selection_defaults()).parse_args(
        ["--router_data_dir", "r", "--output_path", "o"]
    )
    for flag, key in cliargs.SELECTION_FLAGS.items():
        assert getattr(args, key) == sel[key]["default"], flag
    with pytest.raises(SystemExit):
        cli.main(["continue-selection", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(selection.routing_strata; default: {sel['routing_strata']['default']})" in text
    assert f"(selection.distance_batch_size; default: {sel['distance_batch_size']['default']})" in text


# ----------------------------------------------------------------------------- data check


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_check_reports_format_count_id_source_and_first_bad_line(tmp_path):
    alpaca = _write(
        tmp_path / "a.jsonl", [json.dumps({"id": f"q{i}", "instruction": "i", "output": "o"}) for i in range(4)]
    )
    sharegpt = _write(
        tmp_path / "s.jsonl",
        [json.dumps({"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]})] * 3,
    )
    broken = _write(
        tmp_path / "b.jsonl",
        [
            json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}),
            "{not json",
            json.dumps({"messages": []}),
            "{also bad",
        ],
    )
    results = {
        r.name: r
        for r in check_config(
            {"datasets": {"a": alpaca, "s": sharegpt, "b": broken, "gone": str(tmp_path / "none.jsonl")}}
        )
    }
    assert (results["a"].format, results["a"].records, results["a"].id_source, results["a"].ok) == (
        "alpaca",
        4,
        "'id' field",
        True,
    )
    assert (results["s"].format, results["s"].records, results["s"].id_source) == ("sharegpt", 3, "s:<line>")
    assert results["b"].format == "messages" and results["b"].records == 4 and not results["b"].ok
    assert "b.jsonl:2" in results["b"].problem and "b.jsonl:4" not in results["b"].problem  # the first one only
    assert "does not exist" in results["gone"].problem
    text = render(list(results.values()))
    assert text.count("PROBLEM b ") == 1 and "b.jsonl:2" in text


def test_check_finds_ids_shared_across_datasets(tmp_path):
    one = _write(tmp_path / "one.jsonl", [json.dumps({"id": "x", "instruction": "i", "output": "o"})])
    two = _write(tmp_path / "two.jsonl", [json.dumps({"id": "x", "instruction": "j", "output": "p"})])
    results = check_config({"datasets": {"one": one, "two": two}})
    assert results[0].ok and not results[1].ok
    assert "'x'" in results[1].problem and "'one'" in results[1].problem


def test_check_command_exit_status_and_config_errors(tmp_path):
    good = _write(tmp_path / "g.jsonl", [json.dumps({"instruction": "i", "output": "o"})] * 2)
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"instruction": "i", "output": "o"}), "]["])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"datasets": {"g": good}, "model": {"path": "m"}}))
    proc = run_cli("check", "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "1 of 1 datasets ready" in proc.stdout and "alpaca" in proc.stdout
    cfg.write_text(yaml.safe_dump({"datasets": {"g": good, "bad": bad}, "model": {"path": "m"}}))
    proc = run_cli("check", "--configfile", str(cfg))
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stdout
    cfg.write_text(yaml.safe_dump({"datasets": {"g": good}, "model": {"path": "m"}, "shard_sise": 5}))
    proc = run_cli("check", "--configfile", str(cfg))
    assert proc.returncode == 2 and "shard_sise" in proc.stderr
    assert load_config(REPO / "config" / "config.yaml")["index"]["windows_per_job"] >= 1  # defaults filled in


# ----------------------------------------------------------------------------- summary


def _fake_run(root, quality_columns=("sample_id", "dataset", "quality", "kept", "candidate", "reason")):
    sel = root / "results" / "r" / "selection"
    sel.mkdir(parents=True)
    rows = [
        ("a:1", "a", 0.9, True, True, "selected"),
        ("a:2", "a", 0.5, True, False, "below_importance_cut"),
        ("a:3", "a", 0.1, False, False, "duplicate_of:b:1"),
        ("b:1", "b", 0.8, True, True, "not_picked"),
        ("b:2", "b", 0.7, True, True, "selected"),
        ("b:3", "b", 0.6, False, False, "same_answer_as:b:2"),
    ]
    with open(sel / "quality.tsv", "w") as fh:
        fh.write("\t".join(quality_columns) + "\n")
        for row in rows:
            values = dict(zip(("sample_id", "dataset", "quality", "kept", "candidate", "reason"), row))
            fh.write("\t".join(str(values.get(c, "x")) for c in quality_columns) + "\n")
    (sel / "fps_curve.tsv").write_text(
        "step\tsample_id\tcandidate_index\tmin_distance\n0\ta:1\t0\tinf\n1\tb:2\t2\t0.5\n"
    )
    with h5py.File(sel / "candidates.h5", "w") as f:
        f.attrs.update({"quality_method": "ifd", "stage": "two_stage", "metric": "wasserstein", "k": 2})
        f.create_dataset("quality", data=np.zeros(3))
    logs = root / "logs" / "r" / "selection"
    logs.mkdir(parents=True)
    (logs / "candidates.log").write_text(
        "2020-01-01 10:00:00,000 WARNING selectflow.stages.select: an old warning\n"
        "2099-01-01 10:00:00,000 INFO selectflow.stages.select: pool 5, kept 4, candidates 3 (two_stage), k 2\n"
        "2099-01-01 10:00:01,000 WARNING selectflow.select.quality: 3 samples have no response tokens\n"
        "2099-01-01 10:00:02,000 WARNING selectflow.select.quality: 3 samples have no response tokens\n"
    )
    (root / "results" / "r" / "router_data").mkdir()
    return sel


def filled(config: dict) -> dict:
    """``config`` as the summary gets it: checked, the schema's defaults filled in."""
    return with_defaults(config, schema())


def test_summary_counts_method_outputs_warnings_next_steps(tmp_path):
    _fake_run(tmp_path)
    since = 1577872800.0 + 3600 * 24 * 365  # after the 2020 line, before the 2099 ones
    config = filled(
        {
            "run": "r",
            "selection": {
                "quality_method": "auto",
                "importance_selection_percentage": 0.2,
                "selection_percentage": 0.05,
            },
        }
    )
    text = run_summary(config, since=since, workdir=tmp_path)
    lines = text.splitlines()
    row_a = next(line for line in lines if line.split()[:1] == ["a"])
    row_b = next(line for line in lines if line.split()[:1] == ["b"])
    assert lines[lines.index(row_a) - 1].split() == [
        "dataset", "pool", "kept", "candidates", "selected", "duplicates", "shared_answers"
    ]  # fmt: skip
    assert row_a.split()[1:] == ["3", "2", "1", "1", "1", "0"]  # a:3 is a duplicate of b:1
    assert row_b.split()[1:] == ["3", "2", "2", "1", "0", "1"]  # b:3 has b:2's answer
    assert "quality method: ifd (selection.quality_method: auto)" in text and "two_stage" in text
    assert (
        "; diversity: fps (fps_weight: lof_cut, fps_quality_hold_back: 0.05, fps_boilerplate_cut_z: 3.5); distance: "
        in text
    )  # the default
    config["selection"] |= {"fps_weight": "none", "fps_quality_hold_back": 0, "fps_boilerplate_cut_z": None}
    assert "; diversity: fps; distance: " in run_summary(config, since=since, workdir=tmp_path)  # plain FPS
    config["selection"] |= {"fps_weight": "none", "fps_snap": "length"}
    assert "; diversity: fps (fps_snap: length); " in run_summary(config, since=since, workdir=tmp_path)
    config["selection"] |= {"diversity": "facility_location", "fps_snap": "none"}
    assert "; diversity: facility_location; " in run_summary(config, since=since, workdir=tmp_path)
    assert "the selected records" not in text  # selected_data.jsonl is not written in this fake run: not listed
    assert "quality.tsv" in text
    assert "no response tokens (x2)" in text and "an old warning" not in text
    assert "snakemake --report report.html" in text and "continue-selection" in text


def test_summary_reads_columns_by_name_and_survives_missing_files(tmp_path):
    sel = _fake_run(tmp_path, quality_columns=("reason", "candidate", "sample_id", "quality", "dataset", "kept"))
    counts = {r["dataset"]: r for r in selection_counts(Layout("r", tmp_path))}
    assert counts["a"] == {
        "dataset": "a", "pool": 3, "kept": 2, "candidates": 1, "selected": 1, "duplicates": 1, "shared_answers": 0
    }  # fmt: skip
    assert counts["b"]["shared_answers"] == 1
    (sel / "selection_summary.tsv").write_text("dataset\tpool\tselected\tnew_column\na\t30\t10\tz\nb\t20\t5\tz\n")
    counts = {r["dataset"]: r for r in selection_counts(Layout("r", tmp_path))}
    assert counts["a"]["pool"] == 30 and counts["a"]["selected"] == 10 and counts["a"]["kept"] == 2
    empty = run_summary(filled({"run": "nothing"}), ok=False, workdir=tmp_path / "elsewhere")
    assert "FAILED" in empty and "no selection results yet" in empty


def test_failed_run_summary_names_the_failed_jobs_without_repeating_their_message(tmp_path):
    _fake_run(tmp_path)
    (tmp_path / "logs" / "r" / "split_dataset").mkdir()
    (tmp_path / "logs" / "r" / "split_dataset" / "x.log.failure.json").write_text(
        json.dumps({"kind": "input", "attempt": 1, "error": "SelectFlowError: x.jsonl:2: malformed JSON"})
    )
    text = run_summary(filled({"run": "r"}), ok=False, workdir=tmp_path)
    assert "FAILED" in text and "split_dataset/x.log (SelectFlowError)" in text
    assert "malformed JSON" not in text
    assert "split_dataset" not in run_summary(filled({"run": "r"}), ok=True, workdir=tmp_path)


def test_logged_messages_on_failure_include_errors(tmp_path):
    _fake_run(tmp_path)
    (tmp_path / "logs" / "r" / "x.log").write_text("2099-01-01 10:00:00,000 ERROR selectflow.job: boom\n")
    levels = {level for level, _, _ in logged_messages(tmp_path / "logs" / "r", None, ("WARNING", "ERROR"))}
    assert levels == {"WARNING", "ERROR"}
    assert all(level == "WARNING" for level, _, _ in logged_messages(tmp_path / "logs" / "r"))


# ----------------------------------------------------------------------------- quiet logs, grouped embedding


def test_fps_log_lines_name_pick_and_candidate(caplog):
    from selectflow.select.fps import fps_streaming

    feats = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="selectflow.select.fps"):
        result = fps_streaming(feats, 10, metric="l2", device="cpu", log_interval=5)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("pick 5/10"))
    assert line.startswith(f"pick 5/10: candidate {int(result.picks[5])},")


LOAD = """
import logging, sys
logging.basicConfig(level=logging.INFO)
if sys.argv[2] == "plain":
    from transformers import AutoModel
    AutoModel.from_pretrained(sys.argv[1], local_files_only=True)
else:
    from selectflow.index.embed import load_encoder
    load_encoder(sys.argv[1], "cpu")
"""


def test_encoder_load_logs_no_load_report(demo_model):
    def output(how):
        proc = subprocess.run(
            [sys.executable, "-c", LOAD, str(demo_model), how], capture_output=True, text=True, cwd=REPO
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr

    assert "LOAD REPORT" in output("plain")  # what a bare load of a causal LM's backbone logs
    text = output("encoder")
    for noise in ("LOAD REPORT", "UNEXPECTED", "\x1b[", "TP rules", "not sharded"):
        assert noise not in text, text


def test_grouped_embedding_matches_one_window_per_job(tmp_path, demo_model, demo_pool):
    from selectflow.data.records import split_into_shards
    from selectflow.stages.index import (
        embed_item_windows,
        index_embedded_window,
        index_item_window,
        window_groups,
        write_pool_manifest,
    )

    shards = split_into_shards(demo_pool, "demo", tmp_path / "shards", 40)[:3]
    manifest = tmp_path / "manifest.tsv"
    n = write_pool_manifest(shards, manifest)
    assert window_groups(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    embed_item_windows(manifest, 1, 2, 25, demo_model, tmp_path / "g1.h5", batch_size=32, max_length=256, device="cpu")
    with h5py.File(tmp_path / "g1.h5") as f:
        assert sorted(f) == ["window_00002", "window_00003"] and f.attrs["n_windows"] == -(-n // 25)
    for w in (2, 3):
        meta = index_embedded_window(
            tmp_path / "g1.h5", w, tmp_path / "grouped" / f"window_{w:05d}.faiss", index_type="flat_l2"
        )
        single = index_item_window(
            manifest,
            w,
            25,
            demo_model,
            tmp_path / "single" / f"window_{w:05d}.faiss",
            index_type="flat_l2",
            batch_size=32,
            max_length=256,
            device="cpu",
            n_windows=meta["n_windows"],
        )
        assert meta["embed_seconds"] > 0 and single["embed_seconds"] > 0
        assert (tmp_path / "grouped" / f"window_{w:05d}.ids.tsv").read_text() == (
            tmp_path / "single" / f"window_{w:05d}.ids.tsv"
        ).read_text()
        import faiss

        grouped = faiss.read_index(str(tmp_path / "grouped" / f"window_{w:05d}.faiss"))
        alone = faiss.read_index(str(tmp_path / "single" / f"window_{w:05d}.faiss"))
        np.testing.assert_array_equal(grouped.reconstruct_n(0, grouped.ntotal), alone.reconstruct_n(0, alone.ntotal))


# ----------------------------------------------------------------------------- docs


def test_config_doc_rows_are_one_line_with_four_cells():
    from selectflow.configdoc import render

    body = render().split("|---|---|---|---|\n", 1)[1]
    for line in body.splitlines():
        assert line.startswith("| `"), line
        assert len(re.findall(r"(?<!\\)\|", line)) == 5, line
    assert "`None`" not in body


# ----------------------------------------------------------------------------- the workflow's console


def _bad_config(tmp_path):
    good = _write(tmp_path / "good.jsonl", [json.dumps({"id": "z1", "instruction": "a", "output": "b"})])
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"instruction": "a", "output": "b"}), "{bad"])
    model = tmp_path / "model"  # passes the model-folder check; no job here loads it
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": "t", "datasets": {"good": good, "bad": bad}, "model": {"path": str(model)}}))
    return cfg


def test_dry_run_checks_the_data(tmp_path):
    from tests.workflow import snakemake

    proc = snakemake(tmp_path, "-n", config=_bad_config(tmp_path), check=False)
    out = proc.stdout + proc.stderr
    assert "good     alpaca  1        'id' field  ok" in out
    assert out.count("bad.jsonl:2: malformed JSON") == 1, out
    assert "data check: 1 of 2 datasets cannot be read (PROBLEM above: bad)" in out
    # the dry run still lists the jobs: the split that will fail is scheduled, nothing looks complete
    assert proc.returncode == 0 and "split_dataset" in out and "Job stats" in out


def test_a_job_error_appears_once_and_the_summary_follows(tmp_path):
    from tests.workflow import snakemake

    cfg = _bad_config(tmp_path)
    proc = snakemake(tmp_path, "results/t/shards/bad", "--cores", "1", config=cfg, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Trying to restart job" in out  # the profile's retries ran...
    assert out.count("bad.jsonl:2: malformed JSON") == 1, out  # ...without repeating the error
    assert "attempt 3 of rule split_dataset skipped" in out
    assert "SelectFlow run 't': FAILED" in proc.stdout
    assert "logs/t/split_dataset/bad.log (SelectFlowError)" in proc.stdout


# ----------------------------------------------------------------------------- report


def test_fps_title_counts_the_candidates_not_the_kept_samples():
    from selectflow.report.figures import fps_title

    title = fps_title(150, 600, {"stage": "two_stage", "n_kept": 2887, "metric": "wasserstein"})
    assert title.startswith("Farthest-point sampling: 150 picks from 600 candidates")
    assert "top 600 of 2887 kept" in title
    assert "from 2887" not in fps_title(10, 2887, {"stage": "fps", "n_kept": 2887, "metric": "l2"}).replace(
        "from 2887 candidates", ""
    )


def test_index_job_seconds_read_from_the_benchmarks(tmp_path):
    from selectflow.report.figures import index_job_seconds

    folder = tmp_path / "indexes" / "pool"
    folder.mkdir(parents=True)
    head = "s\th:m:s\tmax_rss\n"
    (folder / "window_00000.tsv").write_text(head + "2.5\t0:00:02\t100\n")
    (folder / "window_00001.tsv").write_text(head + "1.5\t0:00:01\t100\n")
    (folder / "embed_group_00000.tsv").write_text(head + "9.0\t0:00:09\t300\n")
    assert index_job_seconds(tmp_path, "pool") == ({0: 2.5, 1: 1.5}, 9.0, 1)
    windows, embed, n = index_job_seconds(tmp_path, "other")
    assert windows == {} and n == 0


@pytest.mark.parametrize("with_reason", [True, False])
def test_example_records_selected_then_each_reason(tmp_path, with_reason):
    from selectflow.report.examples import example_rows, examples_figure

    pool = make_pool(seed=5)
    paths = write_shards(pool, tmp_path / "router_data", seed=3)
    ids = sorted(pool)
    picked = ids[:4]
    rows = []
    for i, sid in enumerate(ids):
        kept, cand = i % 5 != 4, i % 5 in (0, 1, 2)
        reason = (
            "" if sid in picked else ("ifd>=1" if not kept else "below_importance_cut" if not cand else "not_picked")
        )
        if with_reason and i % 5 == 2 and sid not in picked:
            kept, cand, reason = False, False, f"duplicate_of:{ids[0]}-copy-{i}"  # a different id on every row
        rows.append(
            {
                "sample_id": sid,
                "dataset": pool[sid]["norm"]["dataset"],
                "quality": 1.0 - i / 100,
                "kept": kept,
                "candidate": cand,
                **({"reason": reason} if with_reason else {}),
            }
        )
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "quality.tsv", sep="\t", index=False)
    pd.DataFrame(
        {
            "step": range(4),
            "sample_id": picked[::-1],
            "candidate_index": range(4),
            "min_distance": [float("inf"), 3, 2, 1],
        }
    ).to_csv(tmp_path / "curve.tsv", sep="\t", index=False)
    table = example_rows(tmp_path / "quality.tsv", tmp_path / "curve.tsv", paths, per_group=2)
    assert list(table["sample_id"][:2]) == picked[::-1][:2]  # pick order
    reasons = list(dict.fromkeys(table["reason"]))
    expected = (
        ["ifd>=1", "below_importance_cut", "not_picked", "duplicate_of"]
        if with_reason
        else ["dropped by the quality method", "below_importance_cut", "not_picked"]
    )
    kinds = list(dict.fromkeys(r.partition(":")[0] for r in reasons))
    assert reasons[0] == "selected" and sorted(kinds[1:]) == sorted(expected)
    # every duplicate names another id, yet the duplicates are one group of per_group rows
    assert (table.groupby(table["reason"].str.partition(":")[0]).size() <= 2).all()
    first = table.iloc[0]
    norm = pool[first["sample_id"]]["norm"]  # the normalised record stored in the shard
    assert (first["prompt"], first["response"]) == (norm["prompt"], norm["response"])
    examples_figure(tmp_path / "quality.tsv", tmp_path / "curve.tsv", paths, tmp_path / "examples.png")
    assert (tmp_path / "examples.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_small_run_ends_with_the_summary_and_quiet_logs(tmp_path):
    from tests.workflow import config_variant, snakemake

    config = config_variant("small", tmp_path, index={"window_size": 50, "windows_per_job": 2})
    proc = snakemake(tmp_path, "--cores", "2", "--resources", "gpu=1", config=config)
    summary = proc.stdout[proc.stdout.index("SelectFlow run 'small': finished") :]
    row = next(line for line in summary.splitlines() if line.split()[:1] == ["demo"])
    quality = pd.read_csv(tmp_path / "results/small/selection/quality.tsv", sep="\t", keep_default_na=False)
    duplicates = int(quality["reason"].str.startswith("duplicate_of:").sum())
    shared = int(quality["reason"].str.startswith("same_answer_as:").sum())
    assert row.split()[1:] == ["240", *row.split()[2:4], "24", str(duplicates), str(shared)]
    assert re.search(r"quality method: (combined|gate|ifd|perplexity|field)\b", summary)
    assert "snakemake --report report.html" in summary
    # 240 samples in windows of 50: 5 windows, embedded by 3 jobs, each window its own files
    index = tmp_path / "results/small/indexes/pool"
    assert sorted(p.name for p in index.glob("window_*.faiss")) == [f"window_{w:05d}.faiss" for w in range(5)]
    assert sorted(p.name for p in (index / "embeddings").glob("*.h5")) == [f"group_{g:05d}.h5" for g in range(3)]
    logs = "\n".join(p.read_text() for p in (tmp_path / "logs/small").rglob("*.log"))
    for noise in ("faiss.loader", "LOAD REPORT", "UNEXPECTED", "\x1b[", "Loading weights", "TP rules"):
        assert noise not in logs, noise
    assert "pick 5/24: candidate " in logs
    assert (tmp_path / "results/small/report/examples.png").is_file()
