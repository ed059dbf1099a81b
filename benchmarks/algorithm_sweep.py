"""Time every exact position algorithm over a grid of shapes and check the layer's selection rule against it.

    python benchmarks/algorithm_sweep.py                     # default grid, 2 threads
    python benchmarks/algorithm_sweep.py --threads 1 --json sweep.json
    python benchmarks/algorithm_sweep.py --3d --threads 1 --cpu-time    # LambdaLayer3d shapes (GRID_3D)

For each shape the script prints the forward + backward median time of every algorithm (skipping those whose
memory would not fit), the fastest one, the rule's choice (``LambdaLayer(algorithm="auto")``) and how much slower
the rule's choice is than the fastest. docs/algorithms.md records a run and the rule derived from it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import forward_backward, median_ms

from lambdanet import LambdaLayer, LambdaLayer3d
from lambdanet.layers import ALGORITHMS
from lambdanet.layers.algorithms import usable

# (batch, dim, side, scope): LambdaResNet stages at 224 px, CIFAR stages, MobileNet-like maps, large maps.
GRID = [
    (8, 256, 56, 7),
    (8, 256, 28, 23),
    (8, 256, 14, 23),
    (8, 512, 7, 23),
    (8, 256, 14, 7),
    (8, 256, 14, None),
    (8, 512, 7, None),
    (32, 64, 32, 3),
    (32, 128, 16, 7),
    (32, 256, 8, 5),
    (32, 128, 16, 23),
    (4, 64, 32, 11),
    (2, 64, 64, 7),
    (2, 64, 64, 23),
    (2, 64, 64, None),
    (1, 32, 96, 31),
]


# (batch, dim, (T, H, W), scope) for LambdaLayer3d: video-like and cubic volumes, small to large scopes.
GRID_3D = [
    (2, 64, (8, 16, 16), (1, 3, 3)),
    (2, 64, (8, 16, 16), 3),
    (2, 128, (8, 16, 16), 3),
    (2, 64, (8, 16, 16), (3, 5, 5)),
    (2, 64, (4, 8, 8), 5),
    (2, 64, (4, 6, 6), 7),
    (4, 64, (4, 14, 14), (3, 7, 7)),
    (2, 64, (8, 28, 28), (3, 7, 7)),
    (2, 64, (16, 16, 16), 7),
]


def _sweep_3d(reps: int, clock) -> None:
    """Interleaved timing (one call of each algorithm per round) of every algorithm except the quadratic einsum;
    logits only on small volumes."""
    columns = [a for a in ALGORITHMS if a != "einsum" and usable(a, 3)]
    print("| batch | dim | volume | scope | " + " | ".join(columns) + " | fastest | rule | rule / fastest |")
    print("|" + "---|" * (len(columns) + 7))
    for batch, dim, volume, scope in GRID_3D:
        x = torch.randn(batch, dim, *volume, requires_grad=True)
        names = [a for a in columns if a != "logits" or math.prod(volume) <= 1200]
        fns = {a: forward_backward(LambdaLayer3d(dim, scope=scope, algorithm=a), x) for a in names}
        samples: dict[str, list[float]] = {a: [] for a in names}
        for _ in range(reps + 1):
            for a, fn in fns.items():
                t0 = clock()
                fn()
                samples[a].append(clock() - t0)
        times = {a: statistics.median(t[1:]) * 1e3 for a, t in samples.items()}
        rule = LambdaLayer3d(dim, scope=scope).resolve_algorithm(batch, volume)
        fastest = min(times, key=times.__getitem__)
        cells = " | ".join(f"{times[a]:.1f}" if a in times else "-" for a in columns)
        shape = "x".join(map(str, volume))
        ratio = times[rule] / times[fastest]
        print(f"| {batch} | {dim} | {shape} | {scope} | {cells} | {fastest} | {rule} | {ratio:.2f} |")
        sys.stdout.flush()


def _feasible(name: str, batch: int, side: int, scope: int | None) -> bool:
    n = side * side
    offsets = (2 * side - 1) ** 2
    taps = offsets if scope is None else min(scope, 2 * side - 1) ** 2
    if name == "einsum":
        return n * n <= 200_000
    if name == "logits":
        return batch * 4 * n * offsets <= 60_000_000
    if name == "conv":
        return batch * n * taps <= 80_000_000
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--3d", dest="three_d", action="store_true", help="sweep LambdaLayer3d over GRID_3D")
    parser.add_argument("--cpu-time", action="store_true", help="3-D: time process CPU time, not wall-clock")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.three_d:
        _sweep_3d(args.reps, time.process_time if args.cpu_time else time.perf_counter)
        return 0
    rows = []
    print("| batch | dim | map | scope | " + " | ".join(ALGORITHMS) + " | fastest | rule | rule / fastest |")
    print("|" + "---|" * (len(ALGORITHMS) + 7))
    for batch, dim, side, scope in GRID:
        x = torch.randn(batch, dim, side, side, requires_grad=True)
        feat = (side, side) if scope is None else None
        times: dict[str, float] = {}
        for name in ALGORITHMS:
            if _feasible(name, batch, side, scope):
                layer = LambdaLayer(dim, scope=scope, feat_size=feat, algorithm=name)
                times[name] = median_ms(forward_backward(layer, x), reps=args.reps, budget_s=10)
        rule = LambdaLayer(dim, scope=scope, feat_size=feat).resolve_algorithm(batch, (side, side))
        fastest = min(times, key=times.__getitem__)
        ratio = times[rule] / times[fastest] if rule in times else float("nan")
        cells = " | ".join(f"{times[a]:.1f}" if a in times else "-" for a in ALGORITHMS)
        print(f"| {batch} | {dim} | {side}x{side} | {scope or 'global'} | {cells} | {fastest} | {rule} | {ratio:.2f} |")
        sys.stdout.flush()
        rows.append({"batch": batch, "dim": dim, "side": side, "scope": scope, "ms": times, "rule": rule})
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
