from snakemake.utils import validate

from selectflow.locks import clear_stale_locks
from selectflow.oom import attempt_size

validate(config, "../schemas/config.schema.yaml")

if workflow.is_main_process:
    clear_stale_locks()

RESULTS = f"results/{config['run']}"
LOGS = f"logs/{config['run']}"
BENCH = f"benchmarks/{config['run']}"
SEL = config["selection"]


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    shard=r"shard_\d{5}",
    i=r"\d+",
    j=r"\d+",


def scaled(base):
    """A resource function: ``base`` divided by retry.factor per attempt, floor 1."""

    def size(wildcards, attempt):
        return attempt_size(base, attempt, config["retry"]["factor"])

    return size


def current_attempt(wildcards, attempt):
    return attempt


def shard_names(dataset):
    """Shards of one dataset, known once checkpoint split_dataset has run."""
    folder = checkpoints.split_dataset.get(dataset=dataset).output[0]
    return sorted(glob_wildcards(f"{folder}/{{shard}}.jsonl").shard)


def router_shards(wildcards):
    return [
        f"{RESULTS}/router_data/{ds}/{shard}.h5"
        for ds in sorted(config["datasets"])
        for shard in shard_names(ds)
    ]


def distance_blocks(wildcards):
    """Upper-triangle block files of the candidate distance matrix (matrix mode only)."""
    if SEL["distance_mode"] != "matrix":
        return []
    from selectflow.select import n_blocks

    cand = checkpoints.candidates.get().output.h5
    n = n_blocks(cand, SEL["distance_batch_size"])
    return [
        f"{RESULTS}/selection/distances/block_{i}_{j}.h5"
        for i in range(n)
        for j in range(i, n)
    ]


def final_targets(wildcards):
    return [f"{RESULTS}/selection/selected_data.jsonl"]
