"""selectflow.router: dump, quality gate, MoE families."""
