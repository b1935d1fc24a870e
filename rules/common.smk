import os
import sys

from snakemake.logging import logger
from snakemake.utils import validate

from selectflow.config import (
    LENGTH_MATCHED,
    as_param,
    build_config,
    param_before_fps,
    param_of_compare,
    trainer_keys,
)
from selectflow.schema import check_against_schema
from selectflow.data.check import data_check_text, is_dry_run
from selectflow.layout import Layout, demo_log
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.locks import clear_stale_locks
from selectflow.runtime.oom import scaled_resource
from selectflow.data.preflight import check_datasets_given, preflight


def checked(fn, *args):
    """``fn(*args)``; a SelectFlowError stops Snakemake with its message alone (no traceback)."""
    try:
        return fn(*args)
    except SelectFlowError as exc:
        logger.error(f"[selectflow] ERROR: {exc}")
        sys.exit(1)


_CONFIG_SOURCE = (
    ", ".join(map(str, workflow.overwrite_configfiles)) or "config/config.yaml"
)
checked(check_datasets_given, config, workflow.overwrite_configfiles)
# every mistake in a few lines (key, what is wrong, what to write); validate then fills the defaults
checked(check_against_schema, config, _CONFIG_SOURCE)
validate(config, "../selectflow/schemas/config.schema.yaml")
checked(
    check_against_schema,
    trainer_keys(config["train"]),
    _CONFIG_SOURCE,
    "train.schema.yaml",
    "train",
)
# the typed config, the train sections resolved (preset, defaults): once per run
CFG = checked(build_config, config)

if workflow.is_main_process:
    clear_stale_locks()

# every file of this run under results/, logs/ and benchmarks/
PATHS = Layout(CFG.run)

if workflow.is_main_process and is_dry_run(sys.argv):
    # a dry run also checks the data: format, records, id source, first bad line per
    # dataset; it still lists the jobs, the failing split among them
    _problems = data_check_text(config)
    if _problems:
        logger.warning(f"[selectflow] WARNING: {_problems}")

# datasets, model folders, the results disk, a selection of one record: before any job
for _warning in checked(preflight, config, PATHS.results, sys.argv):
    if workflow.is_main_process:
        logger.warning(f"[selectflow] WARNING: {_warning}")


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    shard=r"shard_\d{5}",
    w=r"\d{5}",
    name="[A-Za-z0-9_.-]+",
    i=r"\d+",
    j=r"\d+",


def scaled(base):
    """A resource function: ``base`` divided by retry.factor per attempt, floor 1."""
    return scaled_resource(base, CFG.retry.factor)


def current_attempt(wildcards, attempt):
    return attempt


# {shards folder: (its mtime, sorted shard names, {name: position})}: the input functions ask
# for a dataset's shards once per job; listing the folder each time made a dry run over
# thousands of shards quadratic. The folder's mtime changes whenever a shard is added or removed.
_SHARD_LISTING = {}


def _shard_listing(dataset):
    folder = checkpoints.split_dataset.get(dataset=dataset).output[0]
    mtime = os.stat(folder).st_mtime_ns
    cached = _SHARD_LISTING.get(folder)
    if cached is None or cached[0] != mtime:
        names = sorted(glob_wildcards(f"{folder}/{{shard}}.jsonl").shard)
        cached = (mtime, names, {name: i for i, name in enumerate(names)})
        _SHARD_LISTING[folder] = cached
    return cached[1], cached[2]


def shard_names(dataset):
    """Shards of one dataset, known once checkpoint split_dataset has run."""
    return _shard_listing(dataset)[0]


def _group_start(dataset, shard):
    """Index of the first shard of ``shard``'s router_dump group, and the dataset's shards."""
    names, position = _shard_listing(dataset)
    k = CFG.router_dump.shards_per_job
    return position[shard] // k * k, names


def group_members(wildcards):
    """The shards of the router_dump group named by its first shard ``wildcards.shard``."""
    start, names = _group_start(wildcards.dataset, wildcards.shard)
    return names[start : start + CFG.router_dump.shards_per_job]


def group_shard_files(wildcards):
    return [PATHS.shard(wildcards.dataset, s) for s in group_members(wildcards)]


def group_store_files(wildcards):
    return [PATHS.store_shard(wildcards.dataset, s) for s in group_members(wildcards)]


def group_manifests(wildcards):
    """The group table of every router_dump job (one per router_dump.shards_per_job shards)."""
    k = CFG.router_dump.shards_per_job
    return [
        PATHS.store_group(ds, name)
        for ds in sorted(CFG.datasets)
        for name in shard_names(ds)[::k]
    ]


def router_shards(wildcards):
    """Every router-data shard, known once checkpoint router_data has linked them. The shards are
    no rule's declared output: a rule reading them also takes ``PATHS.router_data_table`` (the
    checkpoint's output) as input, so that a changed model, warm-up or dump setting reruns the
    dump, the linking and that rule (without it the DAG ends at the shards and nothing reruns).
    """
    checkpoints.router_data.get()
    paths = [
        (ds, shard, PATHS.router_shard(ds, shard))
        for ds in sorted(CFG.datasets)
        for shard in shard_names(ds)
    ]
    missing = [(ds, shard, p) for ds, shard, p in paths if not os.path.exists(p)]
    if missing:
        ds, shard, path = missing[0]
        start, names = _group_start(ds, shard)
        raise WorkflowError(
            f"{path} is missing ({len(missing)} router-data shards are): `snakemake router_data -R router_data` "
            f"links them again from {PATHS.router_store}/ without a dump; to dump one again, delete it there too "
            f"and its group table {PATHS.store_group(ds, names[start])}, then run the same command"
        )
    return [p for _, _, p in paths]


def distance_blocks(wildcards):
    """Upper-triangle block files of the candidate distance matrix (matrix mode FPS only)."""
    if (
        CFG.selection.distance_mode != "matrix"
        or CFG.selection.diversity != "fps"
        or CFG.selection.target
    ):
        return []
    cand = checkpoints.candidates.get().output.h5
    from selectflow.select.candidates import n_blocks

    n = n_blocks(cand, CFG.selection.distance_batch_size)
    return [PATHS.distance_block(i, j) for i in range(n) for j in range(i, n)]


# the index names the run builds (none when index.enabled is false)
INDEXES = ["pool", *CFG.index.sequences] if CFG.index.enabled else []
FINAL_TARGETS = PATHS.final_targets(train=CFG.train.enabled, indexes=INDEXES)
STAGE_OUTPUTS = PATHS.stage_outputs(
    train=CFG.train.enabled, warmup=CFG.warmup.enabled, indexes=INDEXES
)


def router_model():
    """The model the router dump runs: the warm-up checkpoint when warm-up is on."""
    if CFG.warmup.enabled:
        return PATHS.warmup_checkpoint
    return CFG.model_path


def pool_shard_files(wildcards):
    return [
        PATHS.shard(ds, shard)
        for ds in sorted(CFG.datasets)
        for shard in shard_names(ds)
    ]


def index_spec(name):
    """What index ``name`` holds: ``pool`` and ``decontam`` are item windows of the pool
    (embedded by the trained model, resp. the base model); others are sequence arrays.
    """
    idx = CFG.index
    if name in ("pool", "decontam"):
        encoder = idx.encoder or PATHS.train_checkpoint
        if name == "decontam":
            encoder = CFG.decontaminate.encoder or CFG.model_path
        return {"kind": "items", "encoder": encoder, "window_size": idx.window_size}
    if name not in idx.sequences:
        raise ValueError(
            f"unknown index '{name}': not pool, decontam or a key of index.sequences"
        )
    return {"kind": "positions", **idx.sequences[name]}


def index_type_of(name):
    """The FAISS index type of index ``name`` (a sequence index may override index.index_type)."""
    spec = index_spec(name)
    return spec.get("index_type") or CFG.index.index_type


def n_windows(name):
    spec = index_spec(name)
    if spec["kind"] == "items":
        # the stage module (pandas, h5py) only once the manifest exists
        manifest = checkpoints.pool_manifest.get().output[0]
        from selectflow.stages.index import n_item_windows

        return n_item_windows(manifest, spec["window_size"])
    from selectflow.stages.index import sequence_windows_of

    return len(
        sequence_windows_of(
            spec["path"], spec["dataset"], spec["window_size"], spec["window_stride"]
        )
    )


def window_files(wildcards, name=None):
    name = name or wildcards.name
    return [PATHS.index_window(name, w) for w in range(n_windows(name))]


def index_window_inputs(wildcards):
    spec = index_spec(wildcards.name)
    if spec["kind"] == "items":
        # the window's vectors, embedded by its group's index_embed job
        group = int(wildcards.w) // CFG.index.windows_per_job
        return {"embeddings": PATHS.index_embeddings(wildcards.name, group)}
    return {"array": spec["path"]}


def target_router_file():
    """The routed target records of selection.target (rule target_router), or none."""
    return [PATHS.target_router] if CFG.selection.target else []


def excluded_ids_file():
    if CFG.decontaminate.eval_set:
        return [PATHS.contaminated]
    return []


# target compare (rules/compare.smk defines COMPARE_TEST, COMPARE_DRAWN)
def compare_draws(method):
    """A drawn baseline's selections for seeds 1, 2, ... (seed 0's is its selected_data.jsonl)."""
    return [PATHS.compare_random_draw(i, method) for i in range(1, CFG.compare.seeds)]


def compare_training_data(wildcards):
    """One selection for every seed; the random baselines draw anew for each seed, and fps with compare.fps_draws."""
    own = PATHS.compare_selected(wildcards.method)
    drawn = wildcards.method in COMPARE_DRAWN or (
        wildcards.method == "fps" and CFG.compare.fps_draws
    )
    return [own, *compare_draws(wildcards.method)] if drawn else [own]


def compare_length_reference(wildcards):
    """random_length and random_matched match the lengths of fps's picks."""
    if wildcards.method in LENGTH_MATCHED:
        return {"reference": PATHS.compare_picks("fps")}
    return {}


def compare_draw_references(wildcards):
    """A length-matched baseline's draws 1, 2, ... match fps's draw 0 or, with compare.fps_draws, fps's draws
    1, 2, ..., the selections fps's fine-tunes 1, 2, ... train on."""
    refs = compare_length_reference(wildcards)
    if refs and CFG.compare.fps_draws:
        refs["draw_references"] = compare_draws("fps")
    return refs


def compare_target_set_inputs(wildcards):
    """What the comparison's target set is made from (compare.target, or one like the test set)."""
    if CFG.compare.target:
        return {"target": CFG.compare.target, "test": COMPARE_TEST}
    if CFG.compare.eval == "demo":
        return {"datasets": list(CFG.datasets.values()), "test": COMPARE_TEST}
    return {
        "quality": PATHS.candidates_quality,
        "router": router_shards(wildcards),
        "router_table": PATHS.router_data_table,
        "test": COMPARE_TEST,
    }


def compare_candidates_inputs(wildcards):
    """What the comparison's candidates are built from (rules compare_candidates and compare_fps_draw):
    the pool, less the held-out slice, the main selection's excluded ids and, with method target and
    eval heldout, the target slice, which every method is kept from too."""
    return {
        "router": router_shards(wildcards),
        "router_table": PATHS.router_data_table,
        "heldout": PATHS.compare_heldout,
        "exclude": excluded_ids_file(),
        "target": compare_target_slice(),
    }


def compare_target_slice():
    """The held-out target slice of the pool, kept from every method (method target, eval heldout)."""
    if (
        "target" in CFG.compare.methods
        and CFG.compare.eval == "heldout"
        and not CFG.compare.target
    ):
        return [PATHS.compare_target_set]
    return []


def compare_seeds(wildcards):
    full = wildcards.method in CFG.compare.full_pools
    return CFG.compare.full_pool_seeds if full else CFG.compare.seeds
