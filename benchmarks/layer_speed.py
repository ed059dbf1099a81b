"""Lambda layer speed and memory against the `lambda-networks` package, a 3x3 convolution and attention.

Forward + backward on CPU, median of many runs, every contender timed in this one process (machines are noisy:
compare within a run). Cases and speed targets: docs/benchmarks.md (|k|=16, |h|=4, |u|=1).

    python benchmarks/layer_speed.py                 # all cases, 2 threads, markdown table on stdout
    python benchmarks/layer_speed.py --threads 1 --json results.json --algorithms
    python benchmarks/layer_speed.py --cases 5 6 --algorithms --cpu-time   # the 3-D cases, CPU time per call

Results, machine and versions are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--cpu-time" in sys.argv:  # set before torch loads OpenMP: waiting threads sleep, CPU time counts work
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import forward_backward, median_ms, saved_for_backward_mib

from lambdanet import LambdaLayer, LambdaLayer3d
from lambdanet.bench.layer import LambdaConv3d
from lambdanet.layers import ALGORITHMS
from lambdanet.layers.algorithms import usable

# (name, input shape, scope or None for global, targets)
CASES = [
    ("c4 LambdaResNet-50", (8, 256, 14, 14), 23, "lucid/3, <= conv3x3"),
    ("c5 LambdaResNet-50", (8, 512, 7, 7), 23, "lucid/3, <= conv3x3"),
    ("CIFAR-sized", (32, 128, 16, 16), 7, "lucid/2"),
    ("64x64 local", (2, 64, 64, 64), 23, "lucid/3"),
    ("64x64 global", (2, 64, 64, 64), None, "lucid/10, mem lucid/10, < attention"),
    ("3-D video", (2, 64, 8, 28, 28), (3, 7, 7), "lambda-conv3d/3"),
    ("3-D cube", (2, 64, 16, 16, 16), (7, 7, 7), "lambda-conv3d/3"),
]
CLOCK = time.perf_counter


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all positions, same width, through scaled_dot_product_attention (its
    memory-efficient/flash kernel on CPU; ``lambdanet bench layer`` also times attention with materialised maps)."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, hh * ww).transpose(-1, -2)
        # Contiguous (b, h, n, d) inputs: with a strided last axis SDPA silently falls back to its math kernel,
        # which stores the whole attention map.
        q, k, v = qkv.contiguous().unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # b h n d
        return y.transpose(-1, -2).reshape(b, c, hh, ww)


def _lucid(dim: int, scope: int | None, size: int) -> nn.Module | None:
    try:
        from lambda_networks import LambdaLayer as LucidLambda
    except ImportError:
        return None
    if scope is None:
        return LucidLambda(dim, dim_k=16, n=size, heads=4, dim_u=1)
    return LucidLambda(dim, dim_k=16, r=scope, heads=4, dim_u=1)


def interleaved_ms(fns: dict[str, Callable[[], None]], reps: int, warmup: int = 2, budget_s: float = 60.0) -> dict:
    """Median milliseconds of each closure, timed in interleaved rounds (one call of each per round), so that a
    change in machine load during the run affects every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(reps):
        if r >= 3 and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            t0 = CLOCK()
            fn()
            samples[name].append(CLOCK() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in samples.items()}


def run_case3d(shape: tuple[int, ...], scope: tuple[int, int, int], algorithms: bool, reps: int) -> dict:
    """LambdaLayer3d (auto, and every 3-D algorithm) against the Conv3d-style lambda layer and a 3x3x3 convolution."""
    b, c, *spatial = shape
    x = torch.randn(shape, requires_grad=True)
    ours = LambdaLayer3d(c, dim_k=16, heads=4, scope=scope)
    row: dict = {"shape": list(shape), "scope": scope, "auto": ours.resolve_algorithm(b, spatial)}
    fns = {"lambdanet": forward_backward(ours, x), "lambda-conv3d": forward_backward(LambdaConv3d(c, scope=scope), x)}
    fns["conv3x3"] = forward_backward(nn.Conv3d(c, c, 3, padding=1, bias=False), x)
    if algorithms:
        for name in (a for a in ALGORITHMS if usable(a, 3) and a not in ("einsum", "logits")):  # quadratic: minutes
            fns[name] = forward_backward(LambdaLayer3d(c, dim_k=16, heads=4, scope=scope, algorithm=name), x)
        # Where the time goes: the layer without its position term, and the bare convolution of ``unfold`` (same
        # multiply-adds as every exact position term; 16 = |v| images per sample, |k| = 16 outputs, r = 7 inputs).
        fns["no position term"] = forward_backward(LambdaLayer3d(c, dim_k=16, heads=4, position=False), x)
        *lead, r = scope
        unfolded = torch.randn(b * 16, r, *spatial).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        fns["unfold's Conv3d alone"] = forward_backward(
            nn.Conv3d(r, 16, (*lead, 1), padding=(*(s // 2 for s in lead), 0), bias=False).to(
                memory_format=torch.channels_last_3d
            ),
            unfolded,
        )
    row["ms"] = interleaved_ms(fns, reps)
    row["ms"]["lambda-networks"] = row["ms"].pop("lambda-conv3d")  # the column of the Conv3d-style reference
    row["saved_mib"] = {"lambdanet": saved_for_backward_mib(lambda: ours(x))}
    return row


def run_case(shape: tuple[int, ...], scope: int | None, algorithms: bool, reps: int) -> dict:
    if len(shape) == 5:
        return run_case3d(shape, scope, algorithms, reps)  # type: ignore[arg-type]
    b, c, hh, ww = shape
    x = torch.randn(shape, requires_grad=True)
    feat = (hh, ww) if scope is None else None
    ours = LambdaLayer(c, dim_k=16, heads=4, dim_u=1, scope=scope, feat_size=feat)
    row: dict = {"shape": list(shape), "scope": scope, "auto": ours.resolve_algorithm(b, (hh, ww))}
    fns = {"lambdanet": forward_backward(ours, x)}
    memory = {"lambdanet": saved_for_backward_mib(lambda: ours(x))}
    fns["conv3x3"] = forward_backward(nn.Conv2d(c, c, 3, padding=1, bias=False), x)
    if scope is None:
        attn = SelfAttention2d(c)
        fns["attention (sdpa)"] = forward_backward(attn, x)
        memory["attention (sdpa)"] = saved_for_backward_mib(lambda: attn(x))
    lucid = _lucid(c, scope, hh)
    if lucid is not None:
        slow = scope is None and hh * ww > 1024  # seconds per call: time it on its own, fewer repetitions
        if slow:
            row["ms_separate"] = {"lambda-networks": median_ms(forward_backward(lucid, x), reps=3, budget_s=30)}
        else:
            fns["lambda-networks"] = forward_backward(lucid, x)
        memory["lambda-networks"] = saved_for_backward_mib(lambda: lucid(x))
    times = interleaved_ms(fns, reps)
    times.update(row.pop("ms_separate", {}))
    if algorithms:
        each = {}
        for name in ALGORITHMS:
            if name in ("einsum", "logits", "conv") and scope is None and hh * ww > 1024:
                continue  # quadratic memory or minutes per call at this size
            if name == "einsum" and hh * ww > 1024:
                continue
            layer = LambdaLayer(c, dim_k=16, heads=4, scope=scope, feat_size=feat, algorithm=name)
            each[name] = forward_backward(layer, x)
        times.update(interleaved_ms(each, max(3, reps // 2), budget_s=30))
    row["ms"] = times
    row["saved_mib"] = memory
    return row


def to_markdown(names: list[str], rows: list[dict]) -> str:
    lines = [
        "| case | input | scope | auto | lambdanet ms | lambda-networks ms | speed-up | conv3x3 ms | vs conv "
        "| other ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in zip(names, rows):
        t = row["ms"]
        ours, lucid, conv = t["lambdanet"], t.get("lambda-networks"), t["conv3x3"]
        others = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k not in ("lambdanet", "lambda-networks", "conv3x3"))
        speed = f"{lucid / ours:.1f}x" if lucid else "-"
        lucid_s = f"{lucid:.1f}" if lucid else "-"
        lines.append(
            f"| {name} | {tuple(row['shape'])} | {row['scope'] or 'global'} | {row['auto']} | {ours:.1f} | "
            f"{lucid_s} | {speed} | {conv:.1f} | {conv / ours:.2f}x | {others} |"
        )
    mem = [r for r in rows if len(r["saved_mib"]) > 1]
    if mem:
        lines += ["", "Saved for backward (MiB):", ""]
        for row in mem:
            lines.append(
                f"- {tuple(row['shape'])} scope {row['scope'] or 'global'}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in row["saved_mib"].items())
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per contender")
    parser.add_argument("--algorithms", action="store_true", help="also time every algorithm explicitly")
    parser.add_argument("--cases", type=int, nargs="*", help="indices into CASES (default all)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time process CPU time instead of wall-clock, with OMP_WAIT_POLICY=PASSIVE unless set: on a loaded "
        "machine threads spinning at OpenMP barriers otherwise add CPU time that is not work (10x for small ops)",
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    picked = args.cases if args.cases else range(len(CASES))
    rows = []
    for i in picked:
        name, shape, scope, target = CASES[i]
        print(f"# {name} {shape} scope={scope} (target: {target})", file=sys.stderr, flush=True)
        rows.append(run_case(shape, scope, args.algorithms, args.reps))
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(to_markdown([CASES[i][0] for i in picked], rows))
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
