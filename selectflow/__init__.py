"""SelectFlow: MoE-routing data selection, memory-frugal training and per-window retrieval.

The Snakemake workflow (``Snakefile``, ``rules/``) maps files to calls into this package;
every piece of logic lives here so it can be tested without Snakemake.
"""

__version__ = "0.1.0"
