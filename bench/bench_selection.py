"""Benchmark of the selection maths: distance blocks, FPS modes, streaming FPS vs the bandwidth bound.

    python bench/bench_selection.py            # quick (< 2 min on 2 CPU cores)
    python bench/bench_selection.py --full     # N=200,000, D=1024, k=10,000 streaming FPS
    python bench/bench_selection.py --device cuda   # N=1,000,000, k=50,000 on a GPU

Every measurement runs in its own subprocess on the same seeded synthetic routing data
(softmax of clustered Gaussian logits, L=16 layers x E=64 experts, so D=1024):

1. one distance block: the seed's broadcast of CDF differences ([B, B, L, E] intermediate)
   vs ours (grid CDF features + FAISS L1 on CPU / ``torch.cdist`` on CUDA);
2. FPS over the same candidates in streaming mode vs matrix mode (blocks written, then read);
3. streaming FPS at scale vs the memory-bandwidth bound k·N·D·4 bytes / bandwidth, the
   bandwidth measured in the same subprocess as the fastest of a few full reads of the
   feature matrix (numpy and torch sums).

Peak memory is what the measured call added: on CPU the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs just before the call) minus its RSS before; on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS, EXPERTS = 16, 64

PRESETS = {
    "quick": {"block": 256, "fps_n": 3000, "fps_k": 300, "fps_block": 500, "scale_n": 100_000, "scale_k": 200},
    "full": {"block": 512, "fps_n": 20_000, "fps_k": 2000, "fps_block": 2000, "scale_n": 200_000, "scale_k": 10_000},
    "cuda": {"block": 1000, "fps_n": 20_000, "fps_k": 2000, "fps_block": 5000, "scale_n": 1_000_000, "scale_k": 50_000},
}


def routing_probs(n: int, seed: int, lo: int = 0):
    """Rows [lo, lo+n) of a fixed synthetic pool: float32 [n, L, E] routing probabilities."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(32, LAYERS, EXPERTS, generator=gen) * 2.0
    gen.manual_seed(seed * 1_000_003 + lo)
    cluster = torch.randint(0, 32, (n,), generator=gen)
    logits = centres[cluster] + torch.randn(n, LAYERS, EXPERTS, generator=gen)
    return torch.softmax(logits, dim=-1).numpy()


def pool_features(n: int, seed: int):
    import numpy as np

    from selectflow.select.distance import features

    out = np.empty((n, LAYERS * EXPERTS), dtype=np.float32)
    for lo in range(0, n, 16384):
        hi = min(lo + 16384, n)
        out[lo:hi] = features(routing_probs(hi - lo, seed, lo), "wasserstein")
    return out


class Peak:
    """Extra memory a block of code allocates at its peak (see the module docstring)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __enter__(self):
        import gc

        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_kb("VmRSS") * 1024
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024
        self.seconds = time.perf_counter() - self.t0
        self.mib = max(0, peak - self.base) / 2**20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def bandwidth(x, device: str, repeats: int = 5) -> float:
    """Bytes per second of the fastest full read of ``x`` (numpy [N, D] float32)."""
    import numpy as np
    import torch

    t = torch.from_numpy(x).to(device)
    best = float("inf")
    for _ in range(repeats):
        for fn in (lambda t=t: t.sum().item(), None if device == "cuda" else lambda: float(np.sum(x))):
            if fn is None:
                continue
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    del t
    return x.nbytes / best


def picks_digest(picks) -> str:
    import numpy as np

    return hashlib.sha1(np.asarray(picks, dtype=np.int64).tobytes()).hexdigest()[:12]


def worker(name: str, p: dict, device: str) -> dict:
    import numpy as np
    import torch

    from selectflow.select.distance import (
        BlockMatrix,
        block_count,
        block_path,
        compute_block,
        features,
        pairwise,
        seed_style_wasserstein,
    )
    from selectflow.select.fps import fps_matrix, fps_streaming

    if name in ("block_seed", "block_ours"):
        probs = routing_probs(p["block"], seed=1)
        ref = None
        if name == "block_ours":
            ref = seed_style_wasserstein(torch.from_numpy(probs[:64]), torch.from_numpy(probs)).numpy()
        best, mib, out = float("inf"), 0.0, None
        for _ in range(3):
            if name == "block_seed":
                pt = torch.from_numpy(probs).to(device)
                with Peak(device) as m:
                    out = seed_style_wasserstein(pt, pt)
                    if device == "cuda":
                        torch.cuda.synchronize()
            else:
                with Peak(device) as m:
                    f = torch.from_numpy(features(probs, "wasserstein")).to(device)
                    out = pairwise(f, f, "wasserstein")
                    if device == "cuda":
                        torch.cuda.synchronize()
            best, mib = min(best, m.seconds), max(mib, m.mib)
            del out
        result = {"seconds": best, "peak_mib": mib}
        if ref is not None:
            f = torch.from_numpy(features(probs, "wasserstein")).to(device)
            result["max_abs_diff"] = float(np.abs(pairwise(f[:64], f, "wasserstein").cpu().numpy() - ref).max())
            result["median_distance"] = float(np.median(ref))
        return result
    if name == "fps_matrix":
        feats = pool_features(p["fps_n"], seed=2)
        with tempfile.TemporaryDirectory() as tmp:
            nb = block_count(len(feats), p["fps_block"])
            with Peak(device) as blocks:
                for i in range(nb):
                    for j in range(i, nb):
                        compute_block(
                            feats,
                            i,
                            j,
                            p["fps_block"],
                            block_path(tmp, i, j),
                            device=device,
                            sub_chunk=1024,
                            metric="wasserstein",
                        )
            with Peak(device) as m:
                result = fps_matrix(
                    BlockMatrix(tmp, len(feats), p["fps_block"], "wasserstein"), p["fps_k"], log_interval=10**9
                )
        return {
            "seconds": m.seconds,
            "peak_mib": m.mib,
            "blocks_seconds": blocks.seconds,
            "blocks_peak_mib": blocks.mib,
            "picks": picks_digest(result.picks),
        }
    if name in ("fps_streaming", "fps_scale"):
        n, k = (p["fps_n"], p["fps_k"]) if name == "fps_streaming" else (p["scale_n"], p["scale_k"])
        feats = pool_features(n, seed=2)
        bw = bandwidth(feats, device)
        with Peak(device) as m:
            result = fps_streaming(feats, k, device=device, log_interval=max(1, k // 10), metric="wasserstein")
        # measured again afterwards: on a shared machine the bandwidth drifts during a long run
        bw_after = bandwidth(feats, device)
        return {
            "seconds": m.seconds,
            "peak_mib": m.mib,
            "bandwidth": bw,
            "bandwidth_after": bw_after,
            "bound_seconds": k * feats.nbytes / max(bw, bw_after),
            "picks": picks_digest(result.picks),
            "n": n,
            "k": k,
            "feature_mib": feats.nbytes / 2**20,
        }
    raise ValueError(name)


def run_worker(name: str, preset: str, device: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--preset", preset, "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"worker {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the default: small sizes, < 2 min")
    ap.add_argument("--full", action="store_true", help="N=200,000, D=1024, k=10,000 streaming FPS")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: N=1,000,000, k=50,000")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.manual_seed(0)
        print(json.dumps(worker(args.worker, PRESETS[args.preset], args.device)))
        return
    import pandas as pd
    import torch

    preset = "cuda" if args.device == "cuda" else "full" if args.full else "quick"
    p = PRESETS[preset]
    print(
        f"preset {preset}: device {args.device}, torch threads {torch.get_num_threads()}, "
        f"L={LAYERS}, E={EXPERTS}, D={LAYERS * EXPERTS}"
    )
    r = {
        name: run_worker(name, preset, args.device)
        for name in ("block_seed", "block_ours", "fps_streaming", "fps_matrix", "fps_scale")
    }
    b = p["block"]
    fs, fm, sc = r["fps_streaming"], r["fps_matrix"], r["fps_scale"]
    rows = [
        (f"block {b}x{b}: seed-style [B,B,L,E] broadcast", r["block_seed"]["seconds"], r["block_seed"]["peak_mib"], ""),
        (
            f"block {b}x{b}: grid CDF + L1 kernel (ours)",
            r["block_ours"]["seconds"],
            r["block_ours"]["peak_mib"],
            f"{r['block_seed']['seconds'] / r['block_ours']['seconds']:.1f}x faster, "
            f"{r['block_seed']['peak_mib'] / max(r['block_ours']['peak_mib'], 1e-3):.0f}x less memory; "
            f"max |diff| {r['block_ours']['max_abs_diff']:.2g} "
            f"(median distance {r['block_ours']['median_distance']:.3g})",
        ),
        (
            f"FPS N={p['fps_n']} k={p['fps_k']}: matrix, computing blocks",
            fm["blocks_seconds"],
            fm["blocks_peak_mib"],
            f"{p['fps_n'] ** 2 * 4 / 2**20:.0f} MiB of blocks on disk",
        ),
        (
            f"FPS N={p['fps_n']} k={p['fps_k']}: matrix, FPS over blocks",
            fm["seconds"],
            fm["peak_mib"],
            f"picks {fm['picks']}",
        ),
        (
            f"FPS N={p['fps_n']} k={p['fps_k']}: streaming",
            fs["seconds"],
            fs["peak_mib"],
            f"picks {fs['picks']} ({'identical' if fs['picks'] == fm['picks'] else 'DIFFERENT'}); "
            f"{(fm['seconds'] + fm['blocks_seconds']) / fs['seconds']:.1f}x faster than matrix incl. blocks",
        ),
        (
            f"FPS N={sc['n']} k={sc['k']}: streaming",
            sc["seconds"],
            sc["peak_mib"],
            f"features {sc['feature_mib']:.0f} MiB, {sc['seconds'] / sc['k'] * 1e3:.2f} ms/step",
        ),
        (
            f"  bandwidth bound k*N*D*4 B / {max(sc['bandwidth'], sc['bandwidth_after']) / 1e9:.1f} GB/s",
            sc["bound_seconds"],
            float("nan"),
            f"streaming / bound = {sc['seconds'] / sc['bound_seconds']:.2f} "
            f"(bandwidth {sc['bandwidth'] / 1e9:.1f} GB/s "
            f"before the run, {sc['bandwidth_after'] / 1e9:.1f} after; the faster one gives the bound)",
        ),
    ]
    table = pd.DataFrame(rows, columns=["measurement", "seconds", "peak extra MiB", "note"])
    with pd.option_context("display.max_colwidth", 200, "display.width", 250):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
