"""Command line: ``selectflow <command>`` (also ``python -m selectflow <command>``).

Commands run the library without Snakemake: resuming a selection from saved router
data (the seed's ``continue_selection.py``), estimating training memory, building the
demo inputs, converting an MoE model for Select-MoE (stage 0), and printing the config
keys table.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import SelectFlowError

EXIT_USER_ERROR = 2


def _make_demo(argv: list[str]) -> int:
    from .demo import build_demo_model, write_demo_pool

    ap = argparse.ArgumentParser(prog="selectflow make-demo", description="write the demo pool and the tiny MoE model")
    ap.add_argument("--out", default="resources/demo", help="folder for demo_pool.jsonl and model/")
    ap.add_argument("--n-records", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pool = f"{args.out}/demo_pool.jsonl"
    write_demo_pool(pool, args.n_records, args.seed)
    build_demo_model(f"{args.out}/model", pool, seed=args.seed)
    print(f"wrote {pool} and {args.out}/model")
    return 0


def _convert(argv: list[str]) -> int:
    from .gate import TRASH_KINDS, convert_model

    ap = argparse.ArgumentParser(prog="selectflow convert",
                                 description="Select-MoE stage 0: a copy of an MoE model with a quality gate at every MoE block")
    ap.add_argument("--model", required=True, help="local Hugging Face MoE causal LM folder")
    ap.add_argument("--out", required=True, help="folder for the converted model (base files linked + gate files)")
    ap.add_argument("--trash", choices=TRASH_KINDS, help="trash expert (default: zero)")
    ap.add_argument("--init-std", type=float, help="std of the gates' normal init (default: 0.02)")
    ap.add_argument("--seed", type=int, help="seed of the gates' init (default: 0)")
    ap.add_argument("--router-pattern", help="regex on router module names (default: router_dump's)")
    args = vars(ap.parse_args(argv))
    model, out = args.pop("model"), args.pop("out")
    out = convert_model(model, out, **{k: v for k, v in args.items() if v is not None})
    print(f"wrote {out}")
    return 0


def _config_doc(argv: list[str]) -> int:
    from .configdoc import render

    argparse.ArgumentParser(prog="selectflow config-doc", description="print the config keys table").parse_args(argv)
    sys.stdout.write(render())
    return 0


def _continue_selection(argv: list[str]) -> int:
    from .select import continue_selection

    return continue_selection(argv)


def _estimate_memory(argv: list[str]) -> int:
    from .train.estimate import estimate_memory_main

    return estimate_memory_main(argv)


COMMANDS = {
    "continue-selection": (_continue_selection, "resume selection from a folder of router-data shards"),
    "estimate-memory": (_estimate_memory, "predict training memory and the largest micro-batch that fits"),
    "make-demo": (_make_demo, "write the demo pool and tiny MoE model"),
    "convert": (_convert, "give an MoE model Select-MoE quality gates (stage 0)"),
    "config-doc": (_config_doc, "print the config keys table (config/README.md)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: selectflow <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:20s} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else EXIT_USER_ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[argv[0]][0](argv[1:]) or 0
    except SelectFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def continue_selection_main() -> int:
    """Console script ``continue-selection`` (the seed's command name)."""
    return main(["continue-selection", *sys.argv[1:]])
