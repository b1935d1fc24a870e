"""Bad input as a user meets it: the README's commands, run from (a copy of) the repository root.

Each test copies the repository layout (Snakefile, rules, config/config.yaml, profiles …)
into a scratch folder, follows the README ("cp config/config.yaml my.yaml", edit run,
datasets and model.path, then ``snakemake -n --configfile my.yaml`` or ``snakemake --cores
2 --resources gpu=1 --configfile my.yaml`` in that folder), and checks the exact first line
the user sees, a non-zero exit for an error, and that ``snakemake -n`` afterwards still
schedules the job that failed. The input files are in tests/bad_inputs/ (see its README).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from selectflow.data.preflight import tiny_selection_warning
from selectflow.data.records import read_dataset, read_jsonl
from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.errors import SelectFlowError
from tests.workflow import REPO

CORPUS = REPO / "tests" / "bad_inputs"
LAYOUT = ("Snakefile", "rules", "scripts", "selectflow", "config", "profiles", "report", "envs")
RUN = ("--cores", "2", "--resources", "gpu=1")


# ----------------------------------------------------------------------------- the user's folder


def repo_copy(folder: Path) -> Path:
    """The repository layout (what `git clone` gives) in ``folder``."""
    for name in LAYOUT:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)
    (folder / "data").mkdir()
    return folder


def my_yaml(root: Path, datasets: dict, model: Path | str, **sections) -> Path:
    """The README's recipe: ``cp config/config.yaml my.yaml``, then edit run, datasets and model.path.

    The datasets' files are copied into ``root/data`` and named by relative paths, as a
    user's would be; ``sections`` replace or update further keys (warmup off by default,
    as the README's "Your own data" example has it).
    """
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config["run"] = "mine"
    config["datasets"] = {}
    for name, src in datasets.items():
        shutil.copy(src, root / "data" / Path(src).name)
        config["datasets"][name] = f"data/{Path(src).name}"
    config["model"]["path"] = str(model)
    for key, value in {"warmup": {"enabled": False}, **sections}.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / "my.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(
    root: Path, *args: str, config: str | None = "my.yaml", prefix: tuple = (), timeout: int = 600
) -> subprocess.CompletedProcess:
    """``snakemake ARGS --configfile my.yaml`` in ``root`` (``prefix``: a command that wraps it)."""
    cmd = [*prefix, sys.executable, "-m", "snakemake", *args, *(("--configfile", config) if config else ())]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


ERROR = "[selectflow] ERROR: "


def workflow_error(proc: subprocess.CompletedProcess) -> str:
    """The first line of the error that stopped Snakemake while it read the workflow (rules/common.smk
    ``checked``: the message alone, no traceback)."""
    assert proc.returncode != 0, output(proc)[-3000:]
    lines = output(proc).splitlines()
    at = next((i for i, ln in enumerate(lines) if ln.startswith(ERROR)), None)
    assert at is not None, output(proc)[-3000:]
    assert "Job stats" not in output(proc) and "Traceback" not in output(proc)  # stopped before any job was planned
    return lines[at].removeprefix(ERROR)


def scheduled(proc: subprocess.CompletedProcess, rule: str) -> set[str]:
    """``dataset`` wildcards of the ``rule`` jobs a dry run lists."""
    blocks = re.split(r"\n(?=(?:local)?(?:rule|checkpoint) )", output(proc))
    return {
        m.group(1)
        for b in blocks
        if re.match(rf"(?:local)?(?:rule|checkpoint) {rule}:", b)
        for m in [re.search(r"wildcards: dataset=(\S+)", b)]
        if m
    }


@pytest.fixture
def root(tmp_path) -> Path:
    return repo_copy(tmp_path)


@pytest.fixture(scope="module")
def good_file(demo_pool, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.jsonl"
    path.write_text("".join(demo_pool.read_text().splitlines(keepends=True)[:40]))
    return path


# ----------------------------------------------------------------------------- 1. --configfile


def test_configfile_replaces_the_demo_datasets(root, good_file, demo_model):
    """README: cp config/config.yaml my.yaml, replace the dataset, snakemake -n --configfile my.yaml."""
    my_yaml(root, {"mine": good_file}, demo_model)
    proc = snakemake(root, "-n")
    assert proc.returncode == 0, output(proc)[-3000:]
    assert scheduled(proc, "split_dataset") == {"mine"}
    assert not re.search(r"^(demo_pool|demo_model) ", output(proc), re.M), "the demo is still built"
    assert "results/demo" not in output(proc)
    # without --configfile the same folder still runs the demo
    demo = snakemake(root, "-n", config=None)
    assert demo.returncode == 0 and scheduled(demo, "split_dataset") == {"demo"}
    assert re.search(r"^demo_pool\s+1$", output(demo), re.M)


def test_configfile_without_datasets_is_an_error(root, demo_model):
    path = my_yaml(root, {}, demo_model)
    assert workflow_error(snakemake(root, "-n")) == (
        f"'datasets' in {path} is empty; name at least one JSONL file (datasets: {{name: path/to/file.jsonl}})"
    )
    assert not (root / "results").exists()


# ----------------------------------------------------------------------------- files that stop at split

STOP = {  # file -> the one line the user sees, after the file's path
    "latin1.jsonl": ":2: not UTF-8 (byte 0xe9 at byte 32 of the line); re-encode the file as "
    "UTF-8, e.g. iconv -f latin1 -t utf-8 latin1.jsonl > latin1.utf8.jsonl if it is Latin-1",
    "utf16.jsonl": ":1: this file is UTF-16, not UTF-8; convert it with iconv -f UTF-16 -t UTF-8 "
    "utf16.jsonl > utf16.utf8.jsonl",
    "surrogate.jsonl": ":2: invalid \\u escape '\\ud83d' (half of a UTF-16 surrogate pair, not "
    "a character); fix or remove this record",
    "deep_nesting.jsonl": ":2: JSON nested too deeply to read; flatten or remove this record",
    "json_array_one_line.json": ":1: this is a JSON array, not JSON Lines (one object "
    "per line); convert it with jq -c '.[]' json_array_one_line.json > "
    'json_array_one_line.jsonl, or python -c "import json,sys; [print(json.dumps(r, '
    'ensure_ascii=False)) for r in json.load(sys.stdin)]" < json_array_one_line.json > '
    "json_array_one_line.jsonl",
    "json_array_pretty.json": ":1: this is a JSON array, not JSON Lines (one object per "
    "line); convert it with jq -c '.[]' json_array_pretty.json > json_array_pretty.jsonl, "
    'or python -c "import json,sys; [print(json.dumps(r, ensure_ascii=False)) for r in '
    'json.load(sys.stdin)]" < json_array_pretty.json > json_array_pretty.jsonl',
    "messages_null_content.jsonl": ":2: messages turn 2 (assistant) 'content' is null; fix or remove this record",
    "messages_image_part.jsonl": ":2: messages turn 1 (user) 'content' part 2 is "
    '\'image_url\', not a text part ({"type": "text", "text": …}); only text can be '
    "trained on; fix or remove this record",
}
ID_FIX = "fix it, or drop the 'id' field from every record of the file (ids become '{}:<line>')"
BAD_IDS = {  # file -> (shown id, why)
    "id_tab.jsonl": ("'r\\t2'", "holds the control character '\\t'"),
    "id_newline.jsonl": ("'r\\n2'", "holds the control character '\\n'"),
    "id_nul.jsonl": ("'r\\x002'", "holds the control character '\\x00'"),
    "id_empty.jsonl": ("''", "empty"),
    "id_too_long.jsonl": ("'" + "r" * 56 + "...", "300 characters long (at most 256)"),
    "id_object.jsonl": ("{'shard': 1, 'row': 2}", "a dict, not a string or integer"),
}
for _file, (_shown, _why) in BAD_IDS.items():
    STOP[_file] = f":2: 'id' {_shown} cannot be a sample id ({_why}); " + ID_FIX.format(_file.removesuffix(".jsonl"))
ACCEPTED = ("bom.jsonl", "gzipped.jsonl.gz", "messages_text_parts.jsonl")
# run through Snakemake (one run, several failing jobs); the rest through read_dataset (the same code)
SNAKEMAKE = (
    "latin1.jsonl",
    "utf16.jsonl",
    "surrogate.jsonl",
    "deep_nesting.jsonl",
    "json_array_pretty.json",
    "messages_null_content.jsonl",
    "messages_image_part.jsonl",
    "id_tab.jsonl",
    "id_object.jsonl",
)


def dataset_name(file: str) -> str:
    return file.split(".")[0]


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, demo_model):
    """One run over every file: the bad ones fail at split_dataset, the accepted ones are split."""
    root = repo_copy(tmp_path_factory.mktemp("split"))
    files = {dataset_name(f): CORPUS / f for f in [*SNAKEMAKE, *ACCEPTED]}
    my_yaml(root, files, demo_model)
    # one target per dataset: Snakemake's keep-going then runs every split (router_data stops at the first error)
    targets = [f"results/mine/shards/{name}" for name in files]
    return root, snakemake(root, *targets, *RUN), snakemake(root, "-n", *targets, *RUN)


@pytest.mark.slow
@pytest.mark.parametrize("file", SNAKEMAKE)
def test_unreadable_file_stops_at_split_with_one_line(split_run, file):
    root, proc, dry = split_run
    assert proc.returncode != 0
    path = f"data/{file}"
    shown = [
        ln.split("ERROR selectflow.job: ", 1)[1]
        for ln in output(proc).splitlines()
        if "ERROR selectflow.job: " in ln and path + ":" in ln
    ]
    assert shown, output(proc)[-3000:]
    assert shown == [path + STOP[file]]  # once: the retries that follow do not repeat it
    assert "Traceback" not in output(proc)
    assert not (root / "results" / "mine" / "shards" / dataset_name(file)).exists()
    assert dataset_name(file) in scheduled(dry, "split_dataset")  # nothing left looking complete


@pytest.mark.slow
def test_bom_gzip_and_text_parts_are_read(split_run):
    root, proc, dry = split_run
    shards = root / "results" / "mine" / "shards"
    assert scheduled(dry, "split_dataset") == {dataset_name(f) for f in SNAKEMAKE}
    for name in ("bom", "gzipped"):
        records = read_jsonl(shards / name / "shard_00000.jsonl")
        assert [r["record"]["instruction"] for r in records] == [
            f"Explain item {i} in one sentence." for i in (1, 2, 3)
        ]
    parts = read_jsonl(shards / "messages_text_parts" / "shard_00000.jsonl")[1]
    assert parts["prompt"] == "### User:\nTranslate:\nbonjour\n\n### Assistant:\n" and parts["response"] == "hello"


@pytest.mark.parametrize("file", sorted(set(STOP) - set(SNAKEMAKE)))
def test_unreadable_file_message(file):
    with pytest.raises(SelectFlowError) as err:
        read_dataset(CORPUS / file, dataset_name(file))
    assert str(err.value) == f"{CORPUS / file}" + STOP[file]


def test_ids_of_another_file_fall_back_without_error(tmp_path):
    """Ids are checked only where they are used: a file whose ids are incomplete uses dataset:line."""
    path = tmp_path / "partial.jsonl"
    path.write_text('{"id": "", "instruction": "q", "output": "a"}\n{"instruction": "q", "output": "a"}\n')
    assert [r["sample_id"] for r in read_dataset(path, "p")] == ["p:1", "p:2"]


# ----------------------------------------------------------------------------- model, disk, tiny selection (dry runs)


@pytest.fixture
def weightless_model(demo_model, tmp_path) -> Path:
    out = tmp_path / "no-weights"
    shutil.copytree(demo_model, out, ignore=shutil.ignore_patterns("*.safetensors"))
    return out


def test_model_path_that_does_not_exist(root, good_file):
    my_yaml(root, {"mine": good_file}, "models/OLMoE")
    assert workflow_error(snakemake(root, "-n")) == (
        f"'model.path' models/OLMoE does not exist (relative to {root}); set 'model.path' to a local Hugging Face "
        "model folder (nothing is downloaded)"
    )
    assert not (root / "results").exists()


def test_model_folder_without_weights(root, good_file, weightless_model):
    my_yaml(root, {"mine": good_file}, weightless_model)
    assert workflow_error(snakemake(root, "-n")) == (
        f"'model.path' {weightless_model} holds no model weights (*.safetensors or pytorch_model*.bin); copy the "
        "weights into it, or set 'model.path' to a complete model folder"
    )


def test_selection_that_rounds_to_one_record_warns(root, good_file, demo_model, tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(good_file.read_text().splitlines(keepends=True)[:12]))
    my_yaml(root, {"mine": small}, demo_model)
    proc = snakemake(root, "-n")
    assert proc.returncode == 0, output(proc)[-3000:]
    warnings = [ln for ln in output(proc).splitlines() if ln.startswith("[selectflow] WARNING")]
    assert warnings[0] == (
        "[selectflow] WARNING: selection.selection_percentage 0.05 of the 12 records in "
        "'datasets' selects 1 record; raise selection_percentage or add records"
    )
    # the same check, on 40 records (2 selected), and on 12 at 10 % (1.2 -> 1)
    assert tiny_selection_warning({"mine": str(good_file)}, 0.05) is None
    assert "of the 12 records in 'datasets' selects 1 record" in tiny_selection_warning({"mine": str(small)}, 0.1)
    assert tiny_selection_warning({"mine": str(small)}, 0.2) is None


def in_mount_namespace(root: Path, options: str) -> tuple:
    """A command prefix: a private mount namespace with a tmpfs (``options``) on ``root/results``."""
    (root / "results").mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unprivileged mount namespaces are not available here")
    return ("unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o {options} tmpfs results && exec "$@"', "sh")


@pytest.mark.parametrize(
    "options, message",
    [
        (
            "ro,size=64m",
            "cannot write results to {} (Read-only file system); outputs go to results/mine/ under the "
            "folder you run snakemake in: run from a writable folder, or make {} writable",
        ),
        (
            "size=1m",
            "the disk of {} is full (1.0 MiB free, at least 100 MiB needed); free space there, or run from a "
            "folder on another disk",
        ),
    ],
)
def test_read_only_or_full_results_disk(root, good_file, demo_model, options, message):
    """A real read-only / full file system (tmpfs in a private mount namespace) under results/."""
    my_yaml(root, {"mine": good_file}, demo_model)
    prefix = in_mount_namespace(root, options)
    assert workflow_error(snakemake(root, "-n", prefix=prefix)) == message.format(root / "results", root / "results")
    if options == "size=1m":  # housekeeping that frees space is not blocked
        unlock = snakemake(root, "--unlock", prefix=prefix)
        assert unlock.returncode == 0, output(unlock)[-2000:]


# ----------------------------------------------------------------------------- router dump → report (real run)


@pytest.fixture(scope="module")
def no_pad_model(demo_model, tmp_path_factory) -> Path:
    """The demo model with a tokenizer that has neither a pad nor an eos token."""
    out = tmp_path_factory.mktemp("nopad") / "model"
    shutil.copytree(demo_model, out)
    tok = json.loads((out / "tokenizer_config.json").read_text())
    tok.pop("pad_token", None), tok.pop("eos_token", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tok))
    return out


@pytest.mark.slow
def test_no_pad_token_and_a_shard_without_selected_samples(tmp_path, demo_pool, no_pad_model):
    """21 records, shard_size 20: the last shard holds one sample (selected or not, a one-sided shard); the
    tokenizer has no pad/eos."""
    root = repo_copy(tmp_path)
    pool = tmp_path / "pool21.jsonl"
    pool.write_text("".join(demo_pool.read_text().splitlines(keepends=True)[:21]))
    my_yaml(
        root,
        {"mine": pool},
        no_pad_model,
        shard_size=20,
        selection={"selection_percentage": 0.1},
        train={"enabled": False},
        index={"enabled": False},
    )
    proc = snakemake(root, *RUN)
    assert proc.returncode == 0, output(proc)[-4000:]
    warnings = [ln for ln in output(proc).splitlines() if ln.startswith("[selectflow] WARNING selectflow.data.tokens")]
    assert warnings and warnings[0] == (
        f"[selectflow] WARNING selectflow.data.tokens: tokenizer {no_pad_model} has neither a pad nor an eos token; "
        "padding with id 0 (padded positions are masked out); set pad_token in its tokenizer_config.json to choose "
        "another"
    )
    results = root / "results" / "mine"
    selected = {r["sample_id"] for r in read_jsonl(results / "selection" / "selected_data.jsonl")}
    shards = sorted((results / "router_data" / "mine").glob("*.h5"))
    assert len(shards) == 2
    # the cases that crashed: a shard with no selected sample, or with only selected ones
    assert any(
        not selected & set(ids) or set(ids) <= selected for ids in (read_router_shard(p).sample_id for p in shards)
    )
    assert all((results / "report" / f).stat().st_size > 0 for f in ("routing_pca.png", "routing_heatmap.png"))
    assert "Nothing to be done" in output(snakemake(root, "-n"))


@pytest.mark.parametrize("picked", ["none", "all"])
def test_routing_sample_of_a_shard_with_no_or_only_selected_samples(tmp_path, picked):
    """The report's routing sample when one shard has no selected sample, or only selected ones."""
    from selectflow.report.routing import routing_sample
    from tests.e2e.test_bad_inputs import write_shard

    write_shard(tmp_path / "a.h5", [f"a{i}" for i in range(10)])
    write_shard(tmp_path / "b.h5", ["b0"])
    selected = {"a1", "a2"} | ({"b0"} if picked == "all" else set())
    sample = routing_sample([tmp_path / "a.h5", tmp_path / "b.h5"], selected)
    assert sample.features.shape == (11, 2 * 4) and sample.n_selected == len(selected)
    assert sorted(sample.selected.tolist()) == [False] * (11 - len(selected)) + [True] * len(selected)


def test_one_padding_rule_for_router_trainer_and_encoder(no_pad_model, demo_model, tmp_path, caplog):
    """pad, else eos, else 0 (logged); the encoder's vectors do not depend on the pad id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectflow.data.tokens import pad_token_id
    from selectflow.index.embed import encode_texts
    from selectflow.train import train

    with_pad, no_pad = AutoTokenizer.from_pretrained(demo_model), AutoTokenizer.from_pretrained(no_pad_model)
    eos_only = AutoTokenizer.from_pretrained(demo_model)
    eos_only.pad_token = None
    assert (pad_token_id(with_pad), pad_token_id(eos_only)) == (with_pad.pad_token_id, with_pad.eos_token_id)
    with caplog.at_level("WARNING", logger="selectflow.data.tokens"):
        assert pad_token_id(no_pad) == 0
    assert "has neither a pad nor an eos token; padding with id 0" in caplog.text
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    texts = ["a short text", "a somewhat longer text than the first one"]
    np.testing.assert_allclose(
        encode_texts(model, no_pad, texts, device="cpu", batch_size=32, max_length=512),
        encode_texts(model, with_pad, texts, device="cpu", batch_size=32, max_length=512),
        rtol=1e-5,
        atol=1e-6,
    )
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(4)))
    summary = train(
        no_pad_model,
        data,
        tmp_path / "run",
        {"max_steps": 1, "micro_batch_size": 4, "max_length": 32, "save_every": 0, "device": "cpu"},
    )
    assert summary["micro_batch_size"] == 4 and (tmp_path / "run" / "checkpoint").is_dir()
