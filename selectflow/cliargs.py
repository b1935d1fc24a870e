"""Parser construction for the command line (:mod:`selectflow.cli`): flag spelling, the flags
that are config keys, and continue-selection's parser.

in: argv lists and the schema's (or a config file's) section values; out: argparse parsers and
parsed values (the proxy section as a :class:`~selectflow.config.ProxyConfig`). Flag types,
choices, help and defaults that are config keys come from the schema. Like :mod:`selectflow.cli`
this imports nothing heavy at module level, so ``selectflow --help`` answers at once.
"""

from __future__ import annotations

import argparse


def normalise_flags(argv: list[str], sep: str) -> list[str]:
    """``--a_b`` / ``--a-b`` → the spelling with ``sep`` between words (values are left alone)."""
    other = "_" if sep == "-" else "-"
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace(other, sep) + eq + value
        out.append(arg)
    return out


def parse_with_proxy(ap: argparse.ArgumentParser, argv: list[str], skip: tuple[str, ...] = ()):
    """Parse ``argv`` with a flag per key of the config's proxy section (less ``skip``, which
    the command defines itself), defaults from the schema; return (other args, ProxyConfig)."""
    from selectflow.config import ProxyConfig, section
    from selectflow.schema import schema

    keys = schema()["properties"]["proxy"]["properties"]
    for key, node in keys.items():
        if key not in skip:
            ap.add_argument(
                f"--{key.replace('_', '-')}",
                type=int if node["type"] == "integer" else float,
                default=node["default"],
                help=f"proxy.{key}: {node['description']} (default: %(default)s)",
            )
    args = vars(ap.parse_args(normalise_flags(argv, "-")))
    return args, section(ProxyConfig, {k: args[k] if k in skip else args.pop(k) for k in keys})


# continue-selection flag -> selection.* key of the schema: its type, choices, help and default
SELECTION_FLAGS = {
    "selection_percentage": "selection_percentage",
    "importance_selection_percentage": "importance_selection_percentage",
    "disable_diversity": "disable_diversity",
    "diversity": "diversity",
    "diversity_neighbors": "diversity_neighbors",
    "diversity_clusters": "diversity_clusters",
    "knn_exact_max": "knn_exact_max",
    "knn_probes": "knn_probes",
    "features": "features",
    "distance_batch_size": "distance_batch_size",
    "fps_log_interval": "fps_log_interval",
    "fps_weight": "fps_weight",
    "lof_cut_z": "lof_cut_z",
    "fps_quality_hold_back": "fps_quality_hold_back",
    "fps_relevance_hold_back": "fps_relevance_hold_back",
    "fps_boilerplate_cut_z": "fps_boilerplate_cut_z",
    "fps_snap": "fps_snap",
    "fps_snap_neighbors": "fps_snap_neighbors",
    "fps_gpus": "fps_gpus",
    "device": "device",
    "metric": "metric",
    "mode": "distance_mode",
    "quality_method": "quality_method",
    "quality_field": "quality_field",
    "quality_cut": "quality_cut",
    "quality_cut_z": "quality_cut_z",
    "routing_strata": "routing_strata",
    "strata_seed": "strata_seed",
    "strata_weight": "strata_weight",
    "near_duplicate_threshold": "near_duplicate_threshold",
    "dedup_system_turns": "dedup_system_turns",
    "shared_answer_min_words": "shared_answer_min_words",
    "shared_answer_max_samples": "shared_answer_max_samples",
}
SCHEMA_TYPES = {"integer": int, "number": float, "string": str}

CONTINUE_NOTE = """
Every flag is also accepted with dashes (--router-data-dir). Defaults are those of the
workflow, from schemas/config.schema.yaml (selection.*). --configfile FILE takes the selection
section of a workflow config instead (config/config.yaml: FPS picks 0.05 of the pool from
every kept sample); flags given after it win. selection.target is not resumed here (its target
records need the workflow's rule target_router): run snakemake for it.
"""


def _schema(name: str) -> dict:
    """A schema of ``schemas/`` (read when a command needs it, so ``--help`` stays light)."""
    from selectflow.schema import schema

    return schema(name)


def _selection_schema() -> dict:
    return _schema("config.schema.yaml")["properties"]["selection"]


def selection_defaults(configfile: str | None = None) -> dict:
    """``selection.*`` values for continue-selection: the schema's defaults, or a config file's section."""
    from selectflow.schema import load_config, section_values

    if configfile:
        return load_config(configfile)["selection"]
    return section_values("selection")


def continue_selection_parser(defaults: dict) -> argparse.ArgumentParser:
    """The continue-selection flags; each selection flag takes type, choices and help from the schema, its
    default from ``defaults`` (:func:`selection_defaults`)."""
    p = argparse.ArgumentParser(
        prog="continue-selection",
        epilog=CONTINUE_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run data selection (quality, FPS, selected_data.jsonl) from saved router data.",
    )
    p.add_argument("--router_data_dir", required=True, help="folder of router-data *.h5 shards (searched recursively)")
    p.add_argument("--output_path", required=True, help="selected_data.jsonl to write; curve and summary go beside it")
    p.add_argument("--configfile", help="workflow config whose selection section gives the defaults")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    props = _selection_schema()["properties"]
    for flag, key in SELECTION_FLAGS.items():
        spec = props[key]
        kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        text = spec["description"].replace("%", "%%") + f" (selection.{key}; default: %(default)s)"
        if "boolean" in kinds:
            p.add_argument(f"--{flag}", dest=key, action="store_true", help=text)
        else:
            kind = next(SCHEMA_TYPES[k] for k in kinds if k in SCHEMA_TYPES)
            p.add_argument(f"--{flag}", dest=key, type=kind, choices=spec.get("enum"), help=text)
    p.set_defaults(**{key: defaults[key] for key in SELECTION_FLAGS.values()})
    return p
