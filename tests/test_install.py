"""A non-editable install (a wheel built from the checkout) runs the CLI from any folder.

``pip install .`` copies only the package: the schemas must travel as package data, and no
code may reach for files beside the checkout. The install goes into a scratch target that
alone is on ``PYTHONPATH``; the commands run from another folder and must give what the
checkout's own CLI gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from selectflow import cli
from tests.stages.test_select import make_pool, write_shards
from tests.workflow import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (target / "selectflow" / "__editable__").exists()
    return target


def run_installed(target, cwd, *argv):
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run(
        [str(target / "bin" / "selectflow"), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_install_is_a_copy_with_its_schemas(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    proc = subprocess.run(
        [sys.executable, "-c", "import selectflow; print(selectflow.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip().startswith(str(installed))
    assert sorted(p.name for p in (installed / "selectflow" / "schemas").glob("*.yaml")) == [
        "config.schema.yaml",
        "train.schema.yaml",
    ]


def test_check_runs_from_another_folder(installed, tmp_path):
    (tmp_path / "data").mkdir()
    records = [{"id": f"r{i}", "instruction": f"say {i}", "output": f"{i} said"} for i in range(5)]
    (tmp_path / "data" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "my.yaml").write_text(
        yaml.safe_dump({"datasets": {"pool": "data/pool.jsonl"}, "model": {"path": "proxy"}})
    )
    proc = run_installed(installed, tmp_path, "check", "--configfile", "my.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pool" in proc.stdout
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump(
            {"datasets": {"pool": "data/pool.jsonl"}, "model": {"path": "proxy"}, "selection": {"metric": "manhattan"}}
        )
    )
    bad = run_installed(installed, tmp_path, "check", "--configfile", "bad.yaml")
    assert bad.returncode == 2 and "selection.metric" in bad.stdout + bad.stderr


def test_continue_selection_from_another_folder_matches_the_checkout(installed, tmp_path):
    write_shards(make_pool(seed=5), tmp_path / "router_data", seed=3)
    (tmp_path / "elsewhere").mkdir()
    proc = run_installed(
        installed,
        tmp_path / "elsewhere",
        "continue-selection",
        "--router-data-dir",
        str(tmp_path / "router_data"),
        "--output-path",
        "out/selected_data.jsonl",
        "--device",
        "cpu",
        "--selection-percentage",
        "0.2",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        cli.main(
            [
                "continue-selection",
                "--router-data-dir",
                str(tmp_path / "router_data"),
                "--output-path",
                str(tmp_path / "ref" / "selected_data.jsonl"),
                "--device",
                "cpu",
                "--selection-percentage",
                "0.2",
            ]
        )
        == 0
    )
    got = (tmp_path / "elsewhere" / "out" / "selected_data.jsonl").read_text()
    assert got == (tmp_path / "ref" / "selected_data.jsonl").read_text() and got.count("\n") >= 1
