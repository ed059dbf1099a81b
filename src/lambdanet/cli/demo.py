"""lambdanet demo: a lambda layer at work (about 5 s of CPU).

For four feature-map shapes, builds the paper's default layer (|k|=16, |h|=4, |u|=1; 23x23 or 7x7 scope, or global
relative positions), shows which exact algorithm algorithm="auto" picks, checks that every algorithm gives the same
output (largest relative difference) and times the pick against a 3x3 convolution of the same width (forward +
backward, milliseconds). Timings on a busy machine are noisy; compare the two columns of one run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lambdanet.layers import ALGORITHMS, LambdaLayer
from lambdanet.layers.algorithms import usable

SHAPES = [((8, 512, 7, 7), 23), ((8, 256, 14, 14), 23), ((16, 128, 16, 16), 7), ((2, 64, 48, 48), None)]


def _time_ms(module: nn.Module, x: torch.Tensor, reps: int = 5) -> float:
    grad = torch.randn_like(module(x))
    module(x).backward(grad)
    start = time.perf_counter()
    for _ in range(reps):
        module(x).backward(grad)
    return (time.perf_counter() - start) / reps * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lambdanet demo", description=__doc__.split("\n", 1)[1].strip().replace("``", "`")
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"argument --threads: {args.threads} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    columns = ("scope", 6), ("auto", 8), ("max rel. diff", 14), ("lambda ms", 10), ("conv3x3 ms", 11)
    print(f"{'input (b, d, H, W)':<22} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for shape, scope in SHAPES:
        b, d, hh, ww = shape
        feat = (hh, ww) if scope is None else None
        layer = LambdaLayer(d, scope=scope, feat_size=feat).eval()
        x = torch.randn(shape)
        with torch.no_grad():
            ref = layer(x)
            diffs = []
            for name in (a for a in ALGORITHMS if usable(a, 2, x.device)):
                if scope is None and name in ("einsum", "conv") and hh * ww > 1024:
                    continue  # minutes and gigabytes: the reason the fast algorithms exist
                layer.algorithm = name
                diffs.append(float((layer(x) - ref).norm() / ref.norm()))
            layer.algorithm = "auto"
        layer.train()
        xg = x.requires_grad_()
        t_lambda = _time_ms(layer, xg)
        t_conv = _time_ms(nn.Conv2d(d, d, 3, padding=1, bias=False), xg)
        print(
            f"{shape!s:<22} {scope or 'global':>6} {layer.resolve_algorithm(b, (hh, ww)):>8} "
            f"{max(diffs):>14.1e} {t_lambda:>10.1f} {t_conv:>11.1f}"
        )
    print("All algorithms are exact; 'auto' picks the fastest for the shape (docs/algorithms.md).")
    return 0
