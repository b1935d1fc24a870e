"""Report figures: the math against naive references, and the real report in a real browser."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from selectflow.report.resources import job_resources
from selectflow.report.routing import pca_2d, routing_sample
from selectflow.router.routerfile import RouterShard, write_router_shard
from selectflow.runtime.jobrecord import read_job_records, record_path
from selectflow.stages.report import FIGURES, make_report_figures
from tests.workflow import REPO, snakemake

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAS_CHROMIUM = Path(CHROMIUM).is_file()
# (category, label) of every figure, as rules/report.smk declares them
REPORT_FIGURES = [
    ("1. Selection", "quality scores"),
    ("1. Selection", "FPS curve"),
    ("1. Selection", "example records"),
    ("2. Routing", "routing PCA"),
    ("2. Routing", "routing heat-map"),
    ("3. Training", "training loss"),
    ("4. Index", "index build"),
    ("5. Resources", "runtime and memory"),
]
FIGURE_FILES = [
    "quality_histogram",
    "fps_curve",
    "examples",
    "routing_pca",
    "routing_heatmap",
    "training_loss",
    "index_build",
    "resources",
]
SELECTED_RED = np.array([214, 39, 40])  # the quality histogram's "selected" bars


# ----------------------------------------------------------------------------- pure parts


def reference_pca(x):
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, s[:2] ** 2 / (s**2).sum()


@pytest.mark.parametrize("shape", [(40, 300), (300, 12)])  # fewer rows than features, and more
def test_pca_matches_svd(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * np.linspace(3, 0.1, shape[1])  # distinct variances: a unique PC1, PC2
    coords, explained = pca_2d(x)
    ref, ref_explained = reference_pca(x)
    np.testing.assert_allclose(np.abs(coords), np.abs(ref), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(explained, ref_explained, rtol=1e-9)


def write_shard(path, ids, probs, dataset):
    records = [json.dumps({"sample_id": s, "dataset": dataset, "record": {}}) for s in ids]
    n = len(ids)
    write_router_shard(
        path,
        RouterShard(
            sample_id=np.array(ids, dtype=object),
            moe_probs=probs.astype(np.float32),
            nll_response=np.ones(n, np.float32),
            n_tokens=np.full(n, 8, np.int32),
            n_response_tokens=np.full(n, 4, np.int32),
            record=np.array(records, dtype=object),
        ),
    )


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(6), size=(300, 3))  # [n, L=3, E=6]
    ids = [f"s{i:04d}" for i in range(300)]
    paths = []
    for k, (name, lo, hi) in enumerate([("alpha", 0, 120), ("beta", 120, 300)]):
        paths.append(tmp_path / name / f"shard_{k:05d}.h5")
        write_shard(paths[-1], ids[lo:hi], probs[lo:hi], name)
    return paths, ids, probs


def test_routing_means_and_sample(shards):
    paths, ids, probs = shards
    selected = set(ids[::10])
    full = routing_sample(paths, selected, max_points=1000)
    picked = np.array([s in selected for s in ids])
    np.testing.assert_allclose(full.mean_pool, probs.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(full.mean_selected, probs[picked].mean(axis=0), rtol=1e-6)
    assert len(full.features) == 300 and full.selected.sum() == 30
    # per-layer CDF features: the last expert's column of each layer is 1
    np.testing.assert_allclose(full.features.reshape(300, 3, 6)[:, :, -1], 1.0, atol=1e-3)
    assert sorted(set(full.dataset)) == ["alpha", "beta"] and (full.dataset == "alpha").sum() == 120

    capped = routing_sample(paths, selected, max_points=100)
    assert capped.selected.sum() == 30 and len(capped.features) == 100  # all selected rows fit in half the budget
    few = routing_sample(paths, selected, max_points=40)
    assert few.selected.sum() == 20 and len(few.features) == 40  # half the budget each
    reordered = routing_sample(paths[::-1], selected, max_points=40)
    assert sorted(map(bytes, few.features)) == sorted(map(bytes, reordered.features))
    np.testing.assert_allclose(reordered.mean_pool, full.mean_pool, rtol=1e-9)


def write_record(path, **fields):
    """A job record as run_job leaves it beside the log ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record_path(path).write_text(
        json.dumps(
            {"version": 1, "log": str(path), "attempt": 1, "status": "done", "gpu_peak_allocated_mb": None, **fields}
        )
    )


def test_job_resources_from_records_and_benchmarks(tmp_path):
    logs, bench = tmp_path / "logs", tmp_path / "bench"
    write_record(
        logs / "router_dump/d/shard_00000.log",
        rule="router_dump",
        attempt=2,
        seconds=4.5,
        peak_host_rss_mb=410.0,
        gpu_peak_allocated_mb=1234.5,
        gpu_peak_reserved_mb=2000.0,
    )
    write_record(logs / "split_dataset/d.log", rule="split_dataset", seconds=2.25, peak_host_rss_mb=120.5)
    write_record(logs / "selection/fps.log", rule="fps", status="error", seconds=1.0, peak_host_rss_mb=99.0)
    (logs / "selection/broken.log.job.json").write_text("{not json")  # skipped, with a warning
    (bench / "router_dump/d").mkdir(parents=True)
    (bench / "router_dump/d/shard_00000.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n12.5\t0:00:12\t512.25\t900\n")
    (bench / "train.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n30.0\t0:00:30\t700.0\t1200\n")

    table = job_resources(logs, bench).set_index("job")
    assert sorted(table.index) == ["router_dump/d/shard_00000", "split_dataset/d", "train"]  # fps failed
    dump, split, train = (table.loc[j] for j in ("router_dump/d/shard_00000", "split_dataset/d", "train"))
    assert (dump["rule"], dump["attempts"], dump["seconds"], dump["max_rss_mb"], dump["gpu_peak_mb"]) == (
        "router_dump",
        2,
        12.5,
        512.25,
        1234.5,
    )  # benchmark wins for time and RSS
    assert (split["rule"], split["seconds"], split["max_rss_mb"]) == ("split_dataset", 2.25, 120.5)
    assert np.isnan(split["gpu_peak_mb"])
    assert (train["rule"], train["seconds"], train["max_rss_mb"]) == ("train", 30.0, 700.0)


JOB_SCRIPT = """
import sys, time
from types import SimpleNamespace
from selectflow.schema import section_values
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.jobs import JobSettings, RetryConfig, run_job

class Resources(dict):
    pass

log, body = sys.argv[1], sys.argv[2]
job = JobSettings(retry=RetryConfig(**section_values("retry")), gpu_id=None)
sm = SimpleNamespace(log=[log], rule="demo_rule", params=SimpleNamespace(job=job), wildcards={"shard": "00003"},
                     resources=Resources(attempt=2, batch_size=8))

def fn():
    block = bytearray(64 * 2**20)  # touched: the peak RSS grows by 64 MB
    time.sleep(0.3)
    if body == "oom":
        raise MemoryError("no room for the batch")
    if body == "input":
        raise SelectFlowError("x.jsonl:2: malformed JSON")
    return len(block)

run_job(sm, fn, size_name="batch_size")
"""


@pytest.mark.parametrize(
    "body, code, status, error",
    [("ok", 0, "done", None), ("oom", 3, "oom", "MemoryError"), ("input", 2, "input_error", "SelectFlowError")],
)
def test_run_job_writes_its_record_however_the_job_ends(tmp_path, body, code, status, error):
    log = tmp_path / "logs" / "demo_rule" / "00003.log"
    proc = subprocess.run(
        [sys.executable, "-c", JOB_SCRIPT, str(log), body],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr + log.read_text()
    records = read_job_records(tmp_path / "logs")
    assert list(records) == ["demo_rule/00003"]
    rec = records["demo_rule/00003"]
    assert (rec["rule"], rec["attempt"], rec["status"], rec["error"]) == ("demo_rule", 2, status, error)
    assert (rec["size_name"], rec["size"], rec["wildcards"]) == ("batch_size", 8, {"shard": "00003"})
    assert 0.3 <= rec["seconds"] < 60 and rec["end"] - rec["start"] == pytest.approx(rec["seconds"], abs=1e-3)
    assert rec["peak_host_rss_mb"] > 64 and rec["gpu_peak_allocated_mb"] is None
    text = log.read_text()
    if status == "done":  # the log's done line (measured a moment later) and the record agree
        logged = float(re.search(r"rule demo_rule done: peak_host_rss_mb=([0-9.]+)", text).group(1))
        assert rec["peak_host_rss_mb"] <= logged <= rec["peak_host_rss_mb"] + 1
    assert not list(log.parent.glob(".*"))  # written atomically: no temp file left


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_figures_without_later_stages(shards, tmp_path):
    """Selection-only run: every figure is written; training and index say 'stage not run'."""
    paths, ids, _ = shards
    from selectflow.config import selection_section
    from selectflow.stages.select import build_candidates, run_fps

    sel = tmp_path / "selection"
    section = selection_section(quality_method="perplexity", selection_percentage=0.1, routing_strata=1, device="cpu")
    build_candidates(paths, sel / "candidates.h5", sel / "quality.tsv", section)
    run_fps(sel / "candidates.h5", sel / "fps_curve.tsv", section)
    out = {name: tmp_path / "report" / f"{name}.png" for name in FIGURES}
    make_report_figures(
        out,
        quality_tsv=sel / "quality.tsv",
        curve_tsv=sel / "fps_curve.tsv",
        candidates_h5=sel / "candidates.h5",
        router_paths=paths,
        log_dir=tmp_path / "no_logs",
        bench_dir=tmp_path / "no_bench",
        train_metrics={},
        index_summaries=[],
    )
    sizes = {name: png_size(path) for name, path in out.items()}
    assert all(w >= 300 and h >= 150 for w, h in sizes.values()), sizes
    # the placeholders are short banners, the real figures are taller
    assert sizes["training"][1] < sizes["quality"][1] and sizes["indexes"][1] < sizes["quality"][1]
    assert not list((tmp_path / "report").glob(".*"))  # no temp files left behind


HOSTILE = [
    "Set ${foo} to $HOME, then pay $5 and $10",
    r"\frac{a}{b} \\ 100% {braces} }{ $x^{$ _ ^",
    "emoji 👩🏽‍💻 🇫🇷 🎉 and e\u0301\u0301 combining",
    "עברית מימין לשמאל ثم العربية",
    "$" * 10_000,
    "long " * 2_000 + "$end$",
]


def test_excerpt_cuts_whole_characters():
    from selectflow.report.canvas import excerpt

    assert excerpt("a  b\n\tc", 10) == "a b c" and excerpt("abcdef", 4) == "abc…"
    assert excerpt("x\x00y\ud800z", 10) == "x\ufffdy\ufffdz"
    for text in ("abe\u0301\u0301xyz", "ab👩🏽‍💻xyz", "ab🇫🇷🇩🇪xyz", "abc\ufe0fxyz"):
        for limit in range(1, len(text)):
            cut = excerpt(text, limit)
            assert len(cut) <= limit and cut.endswith("…")
            kept = cut[:-1]
            assert text.startswith(kept)
            rest = text[len(kept) :]  # what was cut starts a new character, never a mark, joiner or half a flag
            assert not (
                rest
                and (
                    unicodedata.category(rest[0]).startswith("M")
                    or rest[0] in "\u200d\ufe0f"
                    or "\U0001f3fb" <= rest[0] <= "\U0001f3ff"
                    or kept.endswith("\u200d")
                )
            )
            flags = len(kept) - len(kept.rstrip("".join(chr(c) for c in range(0x1F1E6, 0x1F200))))
            assert flags % 2 == 0


def test_figures_draw_user_text_plainly(tmp_path):
    """Records, ids and reasons full of ``$``, TeX, emoji and right-to-left text reach every figure as plain text."""
    rng = np.random.default_rng(2)
    n = 40
    ids = [f"id${i}^{{$%" for i in range(n)]  # two dollars around broken mathtext: matplotlib fails on it
    bad = "costs $x^{$ and a $}$ b"
    records = [
        json.dumps(
            {
                "sample_id": s,
                "dataset": "d",
                "prompt": f"### User:\n{bad} {i} {HOSTILE[i % 6]}\n\n### Assistant:\n",
                "response": f"{bad} {HOSTILE[(i + 1) % 6]}",
                "record": {},
            }
        )
        for i, s in enumerate(ids)
    ]
    path = tmp_path / "d" / "shard_00000.h5"
    write_router_shard(
        path,
        RouterShard(
            sample_id=np.array(ids, dtype=object),
            moe_probs=rng.dirichlet(np.ones(4), size=(n, 2)).astype(np.float32),
            nll_response=rng.uniform(1, 3, n).astype(np.float32),
            n_tokens=np.full(n, 8, np.int32),
            n_response_tokens=np.full(n, 4, np.int32),
            record=np.array(records, dtype=object),
        ),
    )
    from selectflow.config import selection_section
    from selectflow.stages.select import build_candidates, run_fps

    sel = tmp_path / "selection"
    section = selection_section(quality_method="perplexity", selection_percentage=0.2, routing_strata=1, device="cpu")
    build_candidates([path], sel / "candidates.h5", sel / "quality.tsv", section)
    run_fps(sel / "candidates.h5", sel / "fps_curve.tsv", section)
    out = {name: tmp_path / "report" / f"{name}.png" for name in FIGURES}
    make_report_figures(
        out,
        quality_tsv=sel / "quality.tsv",
        curve_tsv=sel / "fps_curve.tsv",
        candidates_h5=sel / "candidates.h5",
        router_paths=[path],
        log_dir=tmp_path / "no_logs",
        bench_dir=tmp_path / "no_bench",
        train_metrics={},
        index_summaries=[],
        examples_png=tmp_path / "report" / "examples.png",
    )
    assert all(png_size(p)[0] >= 300 for p in [*out.values(), tmp_path / "report" / "examples.png"])


# ----------------------------------------------------------------------------- the report in a browser


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    """A finished run of the small config, its figures and ``snakemake --report``."""
    wd = tmp_path_factory.mktemp("report")
    snakemake(wd, "all", "report_figures", "--cores", "2", "--resources", "gpu=1")
    snakemake(wd, "all", "report_figures", "--report", str(wd / "report.html"))
    return wd / "report.html"


def report_results(html: str) -> dict[str, dict]:
    """The report's table of results (path -> name, labels, caption, data_uri, ...)."""
    start = html.index("var results = {") + len("var results = ")
    return json.JSONDecoder().raw_decode(html, start)[0]


@pytest.mark.slow
def test_report_embeds_every_figure_with_caption(report_html):
    html = report_html.read_text()
    results = {Path(path).name: entry for path, entry in report_results(html).items()}
    assert sorted(results) == sorted(f"{name}.png" for name in FIGURE_FILES)
    assert all(
        entry["data_uri"].startswith("data:image/png;") and len(entry["data_uri"]) > 5000 for entry in results.values()
    )
    assert sorted(entry["labels"]["figure"] for entry in results.values()) == sorted(
        label for _, label in REPORT_FIGURES
    )
    assert "Farthest-point sampling over the candidates" in results["fps_curve.png"]["caption"]
    assert "SelectFlow run <tt" in html or "SelectFlow run <code" in html  # report/workflow.rst, config filled in


DRIVER = """
<script>
// Test driver: clicks through the report as a user would (menu -> category -> figure's
// view button), waits for each figure to be decoded, and records what it saw.
(async function () {
  const figures = %(figures)s;
  const last = %(last)s;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function until(fn, what) {
    for (let i = 0; i < 200; i++) { const v = fn(); if (v) return v; await sleep(25); }
    throw new Error("timed out waiting for " + what);
  }
  const link = (text) => [...document.querySelectorAll("a")].find((a) => a.textContent.trim() === text);
  const shown = () => [...document.querySelectorAll("img")].find((i) => i.src.startsWith("data:image/png"));
  async function open([category, label]) {
    (await until(() => document.querySelector("nav ol li a"), "the report's home button")).click();
    await until(() => !shown(), "the landing page");
    (await until(() => link(category), "menu entry " + category)).click();
    const row = await until(() => [...document.querySelectorAll("tr")].find(
      (tr) => tr.cells.length && tr.cells[0].textContent.trim() === label), "result row " + label);
    row.querySelector("a").click();  // the row's "view" button
    const img = await until(() => { const i = shown(); return i && i.complete && i.naturalWidth > 0 && i; },
                            "image of " + label);
    return { category, label, width: img.naturalWidth, height: img.naturalHeight, bytes: img.src.length };
  }
  const seen = [];
  let error = null;
  try { for (const fig of figures) seen.push(await open(fig)); await open(last); }
  catch (e) { error = String(e); }
  const out = document.createElement("pre");
  out.id = "selectflow-test-result";
  out.style.display = "none";
  out.textContent = JSON.stringify({ seen, error });
  document.body.appendChild(out);
})();
</script>
"""


def chromium(*args, user_data: Path) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
        "--virtual-time-budget=15000",
        "--window-size=1500,950",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_CHROMIUM, reason="chromium not installed: run .ci/browser.sh (Debian: apt-get install chromium)"
)
def test_report_figures_show_in_headless_chromium(report_html):
    wd = report_html.parent
    html = report_html.read_text()
    head, sep, tail = html.rpartition("</body>")
    driven = wd / "report_driven.html"
    driven.write_text(
        head + DRIVER % {"figures": json.dumps(REPORT_FIGURES), "last": json.dumps(REPORT_FIGURES[0])} + sep + tail
    )
    with tempfile.TemporaryDirectory() as profile:
        dom = chromium("--dump-dom", driven.as_uri(), user_data=Path(profile))
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'<pre id="selectflow-test-result"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert match, "the report page did not finish rendering:\n" + dom.stdout[-2000:]
    result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["error"] is None, result["error"]
    seen = {(s["category"], s["label"]): s for s in result["seen"]}
    assert sorted(seen) == sorted(REPORT_FIGURES)
    for key, s in seen.items():
        assert s["width"] >= 500 and s["height"] >= 150, (key, s)
    # the page ends on the first figure: an <img> element rendered from the embedded PNG
    page = re.sub(r"<script.*?</script>", "", dom.stdout, flags=re.S)
    assert re.search(r'<img src="data:image/png;[^"]*filename=quality_histogram\.png;base64,', page)

    shot = wd / "results" / "report_screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        proc = chromium(f"--screenshot={shot}", driven.as_uri(), user_data=Path(profile))
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    (REPO / "results").mkdir(exist_ok=True)
    shutil.copyfile(shot, REPO / "results" / "report_screenshot.png")  # the CI artefact
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round()
    assert pixels.shape[:2] == (950, 1500)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # not a blank or single-colour page
    red = (np.abs(pixels - SELECTED_RED).max(axis=-1) <= 8).sum()
    assert red > 200, "the quality histogram's selected bars are not on screen"


def test_quality_histogram_counts_duplicates_apart_from_quality_drops():
    import pandas as pd

    from selectflow.report.figures import quality_groups

    table = pd.DataFrame(
        {
            "sample_id": list("abcdefg"),
            "kept": [True, True, False, False, False, False, True],
            "reason": [
                "selected",
                "not_picked",
                "repetitive",
                "duplicate_of:a",
                "duplicate_of:b",
                "excluded",
                "below_importance_cut",
            ],
        }
    )
    picked = np.array([True, False, False, False, False, False, False])
    counts = {label: int(mask.sum()) for mask, _, label in quality_groups(table, picked)}
    assert counts == {
        "filtered out by the quality method": 1,
        "duplicates (the better copy stays)": 2,
        "excluded (decontamination)": 1,
        "kept, not selected": 2,
        "selected": 1,
    }
