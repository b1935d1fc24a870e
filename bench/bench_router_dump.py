"""Router-dump overhead: full dump (+ HDF5 write) vs a bare forward loop on the same batches.

Also length-sorted vs unsorted batching, and the dump with and without the hidden-state
means (``router_dump.hidden_states``; the dump rows have them, one row does not). Everything is measured in this one
run on the
same records and model; the table prints ratios against the bare loop.

    python bench/bench_router_dump.py [--quick] [--device cpu|cuda] [--model PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from selectflow.data.demo import build_proxy_model, write_demo_pool
from selectflow.data.records import read_dataset
from selectflow.data.tokens import encode_pair, pad_batch
from selectflow.router.dump import DumpSettings, RouterDumper
from selectflow.router.routerfile import write_router_shard


def bare_loop(dumper: RouterDumper, records: list[dict], batch_size: int, sort: bool) -> float:
    """Tokenise, pad and forward the same batches the dump runs; nothing else."""
    order = list(range(len(records)))
    if sort:
        order.sort(key=lambda i: len(records[i]["prompt"]) + len(records[i]["response"]), reverse=True)
    tok, s = dumper.tokenizer, dumper.settings
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            seqs = [
                encode_pair(tok, records[i]["prompt"], records[i]["response"], s.max_length)[0]
                for i in order[lo : lo + batch_size]
            ]
            ids, mask = pad_batch(seqs, tok.pad_token_id)
            dumper.model(
                input_ids=ids.to(dumper.device),
                attention_mask=mask.to(dumper.device),
                output_router_logits=True,
                use_cache=False,
            )
    sync()
    return time.perf_counter() - t


def full_dump(dumper: RouterDumper, records: list[dict], batch_size: int, out: Path) -> float:
    sync()
    t = time.perf_counter()
    shard = dumper.dump(records, batch_size=batch_size, progress=False)
    write_router_shard(out, shard)
    sync()
    return time.perf_counter() - t


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 samples instead of 3000")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", help="model folder (default: the demo model, built here)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = 500 if args.quick else 3000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo_pool(tmp / "pool.jsonl", n_records=n)
        model = args.model or str(build_proxy_model(tmp / "model", tmp / "pool.jsonl", pretrain_epochs=0))
        records = read_dataset(tmp / "pool.jsonl", "bench")
        settings = DumpSettings(
            batch_size=args.batch_size, max_length=256, ifd=False, device=args.device, hidden_states=True
        )
        dumper = RouterDumper.from_path(model, settings)
        bare_loop(dumper, records[:64], args.batch_size, True)  # warm-up
        best = lambda f: min(f() for _ in range(args.repeats))  # noqa: E731
        bare_sorted = best(lambda: bare_loop(dumper, records, args.batch_size, True))
        bare_unsorted = best(lambda: bare_loop(dumper, records, args.batch_size, False))
        dump = best(lambda: full_dump(dumper, records, args.batch_size, tmp / "out.h5"))
        dumper.settings.hidden_states = False
        dump_no_hidden = best(lambda: full_dump(dumper, records, args.batch_size, tmp / "out.h5"))
        dumper.settings.hidden_states = True
        dumper.settings.sort_by_length = False
        dump_unsorted = best(lambda: full_dump(dumper, records, args.batch_size, tmp / "out.h5"))
        dumper.settings.sort_by_length, dumper.settings.ifd = True, True
        dump_ifd = best(lambda: full_dump(dumper, records, args.batch_size, tmp / "out.h5"))
    print(
        f"router dump benchmark: {n} samples, batch {args.batch_size}, device {dumper.device}, best of {args.repeats}"
    )
    rows = [
        ("bare forward loop, length-sorted", bare_sorted),
        ("bare forward loop, unsorted", bare_unsorted),
        ("router dump + HDF5, length-sorted", dump),
        ("router dump + HDF5, sorted, no hidden states", dump_no_hidden),
        ("router dump + HDF5, unsorted", dump_unsorted),
        ("router dump + HDF5 + IFD pass, sorted", dump_ifd),
    ]
    print(f"{'variant':42s} {'seconds':>8s} {'samples/s':>10s} {'vs bare sorted':>15s}")
    for name, sec in rows:
        print(f"{name:42s} {sec:8.3f} {n / sec:10.1f} {sec / bare_sorted:14.3f}x")
    print(f"dump overhead (HDF5 + bookkeeping): {100 * (dump / bare_sorted - 1):+.1f}% (target <= 10%)")
    print(f"hidden-state means: {100 * (dump / dump_no_hidden - 1):+.1f}% dump time")
    print(f"length sorting speed-up: bare {bare_unsorted / bare_sorted:.2f}x, dump {dump_unsorted / dump:.2f}x")


if __name__ == "__main__":
    main()
