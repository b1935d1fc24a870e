"""Command line: ``selectflow <command>`` (also ``python -m selectflow <command>``).

Commands run the library without Snakemake: checking a config's datasets, the summary
of a finished run, resuming a selection from saved router data (the seed's
``continue_selection.py``), estimating training memory, building the demo inputs, converting an MoE
model for Select-MoE (stage 0), and printing the config keys table.

Flags have one style: words joined by dashes (``--router-data-dir``); the seed's
underscore spelling (``--router_data_dir``) is accepted everywhere as an alias. Every command's
main and its own parser live here; the flag spelling, the proxy section's flags and
continue-selection's parser are built by :mod:`selectflow.cliargs`. A command that reads a config
file reads it with :func:`selectflow.schema.load_config` (checked against the schema, defaults
filled in), and flag defaults and choices that are config keys come from the schema. This module
imports nothing heavy, so ``selectflow --help`` answers at once; each command imports what it
needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from selectflow.cliargs import (
    SELECTION_FLAGS,
    continue_selection_parser,
    normalise_flags,
    parse_with_proxy,
    selection_defaults,
)
from selectflow.runtime.errors import EXIT_USER_ERROR, SelectFlowError


def _make_demo(argv: list[str]) -> int:
    from selectflow.config import DemoConfig, section
    from selectflow.schema import section_values

    demo = section_values("demo")  # the workflow's demo: section, defaults
    ap = argparse.ArgumentParser(prog="selectflow make-demo", description="write the demo pool and the tiny MoE model")
    ap.add_argument("--out", default="resources/demo", help="folder for demo_pool.jsonl and model/")
    ap.add_argument("--n-records", type=int, default=demo["n_records"], help="demo.n_records (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=demo["seed"], help="demo.seed (default: %(default)s)")
    args, proxy = parse_with_proxy(ap, argv, skip=("seed",))
    from selectflow.stages.data import demo_model, demo_pool

    demo_cfg = section(DemoConfig, {"n_records": args["n_records"], "seed": args["seed"]})
    pool = f"{args['out']}/demo_pool.jsonl"
    demo_pool(pool, demo_cfg.n_records, demo_cfg.seed)
    demo_model(pool, f"{args['out']}/model", demo_cfg, proxy)
    print(f"wrote {pool} and {args['out']}/model")
    return 0


def _proxy_model(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="selectflow proxy-model",
        description="build the proxy scorer of your own data: a tiny MoE causal LM with a "
        "tokenizer trained on the files, pre-trained on their prompt + response "
        "(what model.path: proxy builds); use the folder as model.path",
    )
    ap.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="JSONL",
        help="a dataset file (Alpaca, ShareGPT or messages); repeat for several",
    )
    ap.add_argument("--out", required=True, help="folder for the model and tokenizer")
    args, proxy = parse_with_proxy(ap, argv)
    from selectflow.stages.data import proxy_model

    proxy_model(args["data"], args["out"], proxy)
    print(f"wrote {args['out']}")
    return 0


def _real_text_pool(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="selectflow real-text-pool",
        description="write a pool of instruction records built from the standard library's "
        "docstrings as alpaca.jsonl, sharegpt.jsonl and messages.jsonl, with "
        "planted near-duplicates and junk (labels: kind, planted)",
    )
    ap.add_argument("--out", required=True, help="folder for the three JSONL files")
    ap.add_argument("--n-records", type=int, default=2000, help="records over the three files (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample and the planting (default: %(default)s)")
    ap.add_argument("--junk-rate", type=float, default=0.1, help="share turned into junk (default: %(default)s)")
    ap.add_argument("--near-dup-rate", type=float, default=0.05, help="share of near-duplicates (default: %(default)s)")
    args = ap.parse_args(normalise_flags(argv, "-"))
    from selectflow.data.realtext import write_realtext_pool

    paths = write_realtext_pool(args.out, args.n_records, args.seed, args.near_dup_rate, args.junk_rate)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _convert(argv: list[str]) -> int:
    from selectflow.schema import schema_default, schema_enum

    ap = argparse.ArgumentParser(
        prog="selectflow convert",
        description="Select-MoE stage 0: a copy of an MoE model with a quality gate at every MoE block",
    )
    ap.add_argument("--model", required=True, help="local Hugging Face MoE causal LM folder")
    ap.add_argument("--out", required=True, help="folder for the converted model (base files linked + gate files)")
    ap.add_argument(
        "--trash",
        choices=schema_enum("warmup", "trash_expert"),
        default=schema_default("warmup", "trash_expert"),
        help="trash expert (warmup.trash_expert; default: %(default)s)",
    )
    ap.add_argument(
        "--init-std",
        type=float,
        default=schema_default("warmup", "gate_init_std"),
        help="std of the gates' normal init (warmup.gate_init_std; default: %(default)s)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=schema_default(None, "seed", "train.schema.yaml"),
        help="seed of the gates' init (train.seed; default: %(default)s)",
    )
    ap.add_argument("--router-pattern", help="regex on router module names (default: router_dump's)")
    args = vars(ap.parse_args(normalise_flags(argv, "-")))
    from selectflow.router.gate import convert_model

    model, out = args.pop("model"), args.pop("out")
    out = convert_model(model, out, **args)
    print(f"wrote {out}")
    return 0


def _config_doc(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="selectflow config-doc", description="print the config keys table").parse_args(argv)
    from selectflow.configdoc import render

    sys.stdout.write(render())
    return 0


def _families_doc(argv: list[str]) -> int:
    from selectflow.router.familycheck import families_doc

    return families_doc(argv)


def _check(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="selectflow check",
        description="check the config and every dataset (format, records, id source, first bad line); runs no model",
    )
    ap.add_argument("--configfile", default="config/config.yaml", help="the workflow config (default: %(default)s)")
    args = ap.parse_args(normalise_flags(argv, "-"))
    from selectflow.data.check import check_config, model_type_problems, render
    from selectflow.schema import load_config

    logging.getLogger("selectflow.data.records").setLevel(logging.WARNING)  # the table says it, once
    config = load_config(args.configfile)
    results = check_config(config)
    sys.stdout.write(f"config {args.configfile}: valid; run '{config.get('run')}'\n")
    sys.stdout.write(render(results))
    bad = [r for r in results if not r.ok]
    sys.stdout.write(f"{len(results) - len(bad)} of {len(results)} datasets ready\n")
    models = model_type_problems(config)
    for problem in models:
        sys.stdout.write(f"PROBLEM: {problem}\n")
    return 0 if not bad and not models else EXIT_USER_ERROR


def _summary(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="selectflow summary", description="print the summary of a run (as shown when snakemake finishes)"
    )
    ap.add_argument("--configfile", default="config/config.yaml", help="the workflow config (default: %(default)s)")
    args = ap.parse_args(normalise_flags(argv, "-"))
    from selectflow.report.summary import run_summary
    from selectflow.schema import load_config

    sys.stdout.write(run_summary(load_config(args.configfile)))
    return 0


def _continue_selection(argv: list[str]) -> int:
    argv = normalise_flags(argv, "_")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--configfile")
    known, _ = pre.parse_known_args(argv)
    args = continue_selection_parser(selection_defaults(known.configfile)).parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    from selectflow.config import SelectionConfig, section
    from selectflow.schema import check_against_schema
    from selectflow.stages.select import continue_selection

    # no target: its records are routed by the workflow (rule target_router), not from saved shards
    values = {**{key: getattr(args, key) for key in SELECTION_FLAGS.values()}, "target": None}
    check_against_schema(values, "continue-selection flags", section_name="selection")
    continue_selection(args.router_data_dir, args.output_path, section(SelectionConfig, values))
    return 0


def _estimate_memory(argv: list[str]) -> int:
    """``selectflow estimate-memory``: the predicted training memory of a model folder; ``--lora-r`` and
    ``--lora-targets`` default to the train schema's ``lora`` keys, ``--precision`` takes its compute precisions."""
    from selectflow.schema import check_against_schema, schema_default, schema_enum

    ap = argparse.ArgumentParser(
        prog="selectflow estimate-memory",
        description="Training-memory estimate before launch, and the micro-batch that fits a budget.",
    )
    ap.add_argument("--model", required=True, help="folder with config.json of a causal LM")
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=1024)
    precisions = [p for p in schema_enum(None, "precision", "train.schema.yaml") if p != "auto"]  # auto: the device's
    ap.add_argument("--precision", choices=precisions, default="fp32")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--lora", action="store_true", help="train LoRA adapters only")
    ap.add_argument(
        "--lora-r",
        type=int,
        default=schema_default("lora", "r", "train.schema.yaml"),
        help="adapter rank (train lora.r; default: %(default)s)",
    )
    ap.add_argument(
        "--lora-targets",
        default=schema_default("lora", "target_modules", "train.schema.yaml"),
        help="'all-linear' or comma-separated module names (train lora.target_modules; default: %(default)s)",
    )
    ap.add_argument("--load-in-8bit", action="store_true")
    ap.add_argument("--budget", help="e.g. 12GB: also print the largest micro-batch (<= 1024) that fits")
    args = ap.parse_args(normalise_flags(argv, "-"))
    from selectflow.runtime.units import parse_bytes
    from selectflow.train.estimate import estimate_training_memory, model_shape, pick_micro_batch

    targets = args.lora_targets if args.lora_targets == "all-linear" else args.lora_targets.split(",")
    # the flags that are train keys, checked as the workflow checks them
    check_against_schema(
        {
            "micro_batch_size": args.micro_batch,
            "max_length": args.max_length,
            "precision": args.precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "load_in_8bit": args.load_in_8bit,
            "lora": {"enabled": args.lora, "r": args.lora_r, "target_modules": targets},
        },
        "estimate-memory flags",
        "train.schema.yaml",
        "train",
    )
    shape = model_shape(args.model, {"enabled": args.lora, "r": args.lora_r, "target_modules": targets})
    opts = dict(
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        lora=args.lora,
        load_in_8bit=args.load_in_8bit,
    )
    est = estimate_training_memory(shape, micro_batch=args.micro_batch, max_length=args.max_length, **opts)
    trainable = shape.lora_params if args.lora else shape.n_params
    print(
        f"model {args.model}: {shape.n_params:,} parameters, {trainable:,} trainable; "
        f"micro-batch {args.micro_batch} x max_length {args.max_length}, {args.precision}"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}"
    )
    print(est.table().to_string(index=False))
    if args.budget:
        budget = parse_bytes(args.budget, "--budget")
        mb = pick_micro_batch(shape, budget, max_length=args.max_length, upper=1024, **opts)
        print(f"largest micro-batch that fits {args.budget}: {mb}")
    return 0


COMMANDS = {
    "check": (_check, "check the config and every dataset (format, records, ids, first bad line); runs no model"),
    "summary": (_summary, "print the summary of a finished run (counts, quality method, outputs, warnings)"),
    "continue-selection": (_continue_selection, "resume selection from a folder of router-data shards"),
    "estimate-memory": (_estimate_memory, "predict training memory and the largest micro-batch that fits"),
    "make-demo": (_make_demo, "write the demo pool and tiny MoE model"),
    "proxy-model": (_proxy_model, "build a tiny MoE scorer on your own JSONL files (model.path: proxy)"),
    "real-text-pool": (_real_text_pool, "write a labelled pool built from Python's docstrings (three formats)"),
    "convert": (_convert, "give an MoE model Select-MoE quality gates (stage 0)"),
    "config-doc": (_config_doc, "print the config keys table (config/README.md)"),
    "families-doc": (_families_doc, "check every installed MoE family and print the table (docs/families.md)"),
}


def _usage() -> str:
    lines = ["usage: selectflow <command> [options]   (selectflow <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:20s} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "  --version            print the version"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        from selectflow import __version__

        print(f"selectflow {__version__}")
        return 0
    if not argv:
        sys.stderr.write(_usage())
        return EXIT_USER_ERROR
    if argv[0] not in COMMANDS:
        sys.stderr.write(f"selectflow: unknown command '{argv[0]}'\n\n" + _usage())
        return EXIT_USER_ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[argv[0]][0](argv[1:]) or 0
    except SelectFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def continue_selection_main() -> int:
    """Console script ``continue-selection`` (the seed's command name)."""
    return main(["continue-selection", *sys.argv[1:]])
