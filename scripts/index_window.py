"""Rule index_window: one window's vectors -> FAISS index + ids + metadata (atomic); no model, no torch."""

from selectflow.config import IndexConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import index_window

sm = snakemake  # noqa: F821 - injected by Snakemake
index, w = from_param(IndexConfig, sm.params.index), int(sm.wildcards.w)
# sm.input[0]: the group's embeddings (item windows) or the sequence array (position windows)
run_job(sm, lambda: index_window(sm.params.spec, w, sm.input[0], sm.output.faiss, index))  # a GPU when ivfpq asked
