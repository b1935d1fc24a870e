"""Rule index_window: one window's vectors -> FAISS index + ids + metadata (atomic); no model, no torch."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import index_embedded_window, index_sequence_window

sm = snakemake  # noqa: F821 - injected by Snakemake
spec, idx, w = sm.params.spec, sm.params.index, int(sm.wildcards.w)
index_type = spec.get("index_type") or idx["index_type"]
common = dict(index_type=index_type, min_free_bytes=int(idx["min_free_gb"] * 2**30))
if spec["kind"] == "items":
    body = lambda: index_embedded_window(sm.input.embeddings, w, sm.output.faiss, **common)  # noqa: E731
else:
    body = lambda: index_sequence_window(  # noqa: E731
        sm.input.array, spec["dataset"], w, spec["window_size"], spec["window_stride"], sm.output.faiss, **common,
    )
run_job(sm, body)  # claims a GPU when the rule asked for one (ivfpq)
