"""Rule index_window: one window's vectors -> FAISS index + ids + metadata (atomic)."""
from selectflow.indexing import index_item_window, index_sequence_window
from selectflow.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
spec, idx, w = sm.params.spec, sm.params.index, int(sm.wildcards.w)
common = dict(index_type=spec.get("index_type") or idx["index_type"], min_free_bytes=int(idx["min_free_gb"] * 2**30))
if spec["kind"] == "items":
    body = lambda: index_item_window(  # noqa: E731
        sm.input.manifest, w, spec["window_size"], sm.input.encoder, sm.output.faiss,
        batch_size=sm.resources.batch_size, max_length=idx["max_length"], device=idx["device"], **common,
    )
else:
    body = lambda: index_sequence_window(  # noqa: E731
        sm.input.array, spec["dataset"], w, spec["window_size"], spec["window_stride"], sm.output.faiss, **common,
    )
run_job(sm, body, size_name="batch_size", gpu=True)
