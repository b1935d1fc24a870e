"""score_first's τ bisection, capped for large pools: time, τ and picks of the capped bisection against the full one.

    python bench/bench_score_first.py --n 20000 --k 200

A pool of ``n`` synthetic routing rows (L=16, E=64, Dirichlet(0.3), the distance's grid
features) with random quality. The same :func:`selectflow.select.baselines.score_first` runs
twice in this process: with the full :data:`~selectflow.select.baselines.BISECTION_STEPS`
halvings (an unlimited budget), and with the budget that leaves
:data:`~selectflow.select.baselines.MIN_BISECTION_STEPS` (what the default
:data:`~selectflow.select.baselines.WALK_DISTANCES` gives once k·n exceeds about 1e9).
Printed: seconds and walks of each, τ of each, the share of the full run's picks the capped
one also picks; then the halvings the default budget gives at larger pools (k = 1 % of n).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from selectflow.select import baselines, distance

L, E = 16, 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--metric", default="wasserstein")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    probs = rng.standard_gamma(0.3, size=(args.n, L, E)).astype(np.float32)
    feats = distance.features(probs / probs.sum(-1, keepdims=True), args.metric)
    quality, ids = rng.normal(size=args.n), np.array([f"s{i:07d}" for i in range(args.n)], dtype=object)
    runs = {}
    capped_budget = (baselines.MIN_BISECTION_STEPS + 1) * args.k * args.n
    for name, budget in (("full (30 halvings)", 10**30), ("capped", capped_budget)):
        t = time.perf_counter()
        picks, tau = baselines.score_first(feats, quality, ids, args.k, args.metric, budget=budget)
        runs[name] = (time.perf_counter() - t, baselines.bisection_steps(args.k, args.n, budget) + 1, tau, picks)
        print(f"{name:20s} {runs[name][0]:7.1f} s, {runs[name][1]} walks, tau {tau:.6g}", flush=True)
    (t_full, _, tau_full, p_full), (t_cap, _, tau_cap, p_cap) = runs.values()
    print(
        f"n={args.n:,} k={args.k}: capped/full time {t_cap / t_full:.2f}x; tau {tau_cap / tau_full:.6f} of the full "
        f"one; {len(set(p_cap) & set(p_full)) / args.k:.1%} of the full run's picks also picked"
    )
    for n in (200_000, 1_000_000, 2_000_000, 10_000_000):
        k = n // 100
        print(
            f"default budget ({baselines.WALK_DISTANCES:.0e} distances), n={n:,}, k={k:,}: "
            f"{baselines.bisection_steps(k, n)} halvings, {baselines.bisection_steps(k, n) + 1} walks "
            f"of up to {k * n:.1e} distances each"
        )


if __name__ == "__main__":
    main()
