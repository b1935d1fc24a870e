"""Rule index_embed: a group of item windows -> encoder embeddings, one HDF5 file (encoder loaded once)."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import embed_item_windows

sm = snakemake  # noqa: F821 - injected by Snakemake
spec, idx = sm.params.spec, sm.params.index
run_job(
    sm,
    lambda: embed_item_windows(
        sm.input.manifest, int(sm.wildcards.g), idx["windows_per_job"], spec["window_size"], sm.input.encoder,
        sm.output[0], batch_size=sm.resources.batch_size, max_length=idx["max_length"], device=idx["device"],
    ),
    size_name="batch_size",
)
