"""Project hygiene a user relies on: lint-clean rules, current config docs, schema errors."""

import re
import subprocess
import sys

import pytest
import yaml

from selectflow.configdoc import render
from tests.workflow import REPO


def test_config_readme_is_current():
    assert (REPO / "config" / "README.md").read_text() == render(), (
        "run: python -m selectflow config-doc > config/README.md"
    )


def test_every_schema_key_has_a_description():
    from selectflow.configdoc import _rows

    schema = yaml.safe_load((REPO / "selectflow" / "schemas" / "config.schema.yaml").read_text())
    missing = [key for key, _, _, meaning in _rows(schema) if not meaning]
    assert missing == []


def test_snakefmt_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_clean(command):
    """``ruff check`` and ``ruff format --check`` with the settings of pyproject.toml."""
    proc = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr


def test_snakemake_lint_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "patch, words",
    [
        ({"shard_size": "many"}, "shard_size"),
        ({"no_such_key": 1}, "no_such_key"),
        ({"selection": {"selection_percentage": 1.5}}, "selection_percentage"),
        ({"selection": {"selection_percentage": 0}}, "selection_percentage"),
    ],
)
def test_bad_config_is_rejected_with_the_key(tmp_path, patch, words):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in patch.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "config.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert words in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


# Runs Snakemake's command line in this process, then prints which top-level modules (and
# selectflow subpackages) the process had imported by then.
_IMPORTS_AFTER = """
import sys
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
try:
    main()
finally:
    names = {".".join(m.split(".")[:2]) if m.startswith("selectflow.") else m.split(".")[0] for m in sys.modules}
    print("IMPORTED", " ".join(sorted(names)))
"""
HEAVY = ("matplotlib", "torch", "faiss", "transformers")


@pytest.mark.parametrize("command", [("--list-rules",), ("-n",)])
def test_reading_the_workflow_imports_no_stage_and_no_plotting_or_torch(tmp_path, command):
    """Every snakemake start reads the Snakefile: matplotlib, torch or a stage module there costs
    seconds each time. ``--list-rules`` only reads it; ``-n`` also builds the DAG of a fresh run."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _IMPORTS_AFTER,
            *command,
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "--configfile",
            str(REPO / "tests" / "configs" / "small" / "config.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report_figures" in proc.stdout + proc.stderr  # the whole workflow was read
    imported = set(next(ln for ln in proc.stdout.splitlines() if ln.startswith("IMPORTED ")).split()[1:])
    assert {"snakemake", "selectflow.config"} <= imported
    assert imported.isdisjoint({*HEAVY, "selectflow.stages"}), sorted(imported & {*HEAVY, "selectflow.stages"})


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, markup and punctuation but - and _ gone, spaces to -."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            base = _slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_links_between_the_docs_resolve():
    """Every relative link of README.md and docs/*.md names a file of the tree and, after #, a heading of it."""
    docs = [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def _pins(path, *, only_pins: bool) -> dict[str, str]:
    """The ``name == version`` lines of a requirements-style file, names canonical; ``only_pins``: every
    requirement line must be one."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            specs = list(req.specifier)
            if len(specs) == 1 and specs[0].operator == "==":
                pins[canonicalize_name(req.name)] = specs[0].version
            else:
                assert not only_pins, f"{path}: {line} is no == pin"
    return pins


def test_constraints_pin_every_dependency_within_its_range():
    """The CPU install's constraints pin each dependency of the package, its ``cpu`` and ``test`` extras
    once, at a version inside pyproject's range, and do not contradict requirements-cpu.txt."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["cpu"] + extras["test"]
    constraints = _pins("constraints-cpu.txt", only_pins=True)
    requirements = _pins("requirements-cpu.txt", only_pins=False)
    assert not set(constraints) & set(requirements), "a package pinned in both files"
    for line in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        version = constraints.get(name) or requirements.get(name)
        assert version is not None, f"{name} is not pinned"
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} outside {req.specifier}"
