"""Causal lambda layers against causal softmax attention (SDPA, ``is_causal=True``) of the same width.

Grid: batch x length x heads x query depth |k|. Contenders, all causal, width ``--dim``:

- ``content``: content lambda only (the chunkwise scan of ``lambdanet.layers.causal_chunk``);
- ``local63``: content + position lambdas over a 63-wide causal scope;
- ``global``: content + global relative position lambdas (``max_length`` = the length);
- ``sdpa``: fused qkv projection + ``scaled_dot_product_attention(is_causal=True)`` + head merge.

Per case: forward ms, forward + backward ms (medians; the contenders are interleaved call by call, so machine load
hits all alike), backward ms (the difference) and, with ``--memory``, the peak MiB of forward + backward (CUDA
allocator, else live tensor bytes). Ratios are to ``sdpa`` of the same case.

    python benchmarks/sequence_ops.py --lengths 1024 4096 16384 --threads 2
    python benchmarks/sequence_ops.py --lengths 32768 --reps 1 --warmup 0 --threads 1   # one call each
    python benchmarks/sequence_ops.py --lengths 4096 65536 --contenders content sdpa --reps 3 --device cuda

Results and commands are recorded in docs/sequences.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lambdanet import LambdaLayer1d
from lambdanet.bench.timing import peak_mib, synchronize

CONTENDERS = ("content", "local63", "global", "sdpa")


class CausalSDPA(nn.Module):
    """Causal multi-head attention of width ``dim``: (b, n, dim) -> (b, n, dim)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(b, n, d)


def build(name: str, dim: int, heads: int, dim_k: int, length: int) -> nn.Module:
    if name == "sdpa":
        return CausalSDPA(dim, heads)
    kw = {"dim_k": dim_k, "heads": heads, "causal": True, "norm": "layer"}
    if name == "content":
        return LambdaLayer1d(dim, position=False, **kw)
    if name == "local63":
        return LambdaLayer1d(dim, scope=63, **kw)
    return LambdaLayer1d(dim, scope=None, max_length=length, **kw)


def run_case(args, batch: int, length: int, heads: int, dim_k: int) -> list[dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    mods = {n: build(n, args.dim, heads, dim_k, length).to(device) for n in args.contenders}
    x = torch.randn(batch, length, args.dim, device=device, requires_grad=True)

    def fwd(m):
        with torch.no_grad():
            return m(x)

    def fwd_bwd(m):
        m(x).sum().backward()

    times = {n: {"fwd": [], "fb": []} for n in mods}
    for _ in range(args.warmup):
        for m in mods.values():
            fwd_bwd(m)
    start = time.perf_counter()
    for rep in range(args.reps):
        for n, m in mods.items():  # interleaved: each rep runs every contender once
            for kind, fn in (("fwd", fwd), ("fb", fwd_bwd)):
                synchronize(device)
                t0 = time.perf_counter()
                fn(m)
                synchronize(device)
                times[n][kind].append(time.perf_counter() - t0)
        if rep >= 2 and time.perf_counter() - start > args.budget_s:  # at least 3 reps unless --reps is lower
            break
    rows = []
    for n, m in mods.items():
        fw, fb = statistics.median(times[n]["fwd"]) * 1e3, statistics.median(times[n]["fb"]) * 1e3
        row = {"batch": batch, "length": length, "heads": heads, "dim_k": dim_k, "name": n, "fwd_ms": fw}
        row |= {"fwd_bwd_ms": fb, "bwd_ms": fb - fw, "reps": len(times[n]["fb"])}
        if isinstance(m, LambdaLayer1d) and m.pos is not None:
            row["algorithm"] = m.resolve_algorithm(batch, length)
        if args.memory:
            row["peak_mib"] = peak_mib(lambda m=m: fwd_bwd(m), device)
        rows.append(row)
    base = next((r for r in rows if r["name"] == "sdpa"), None)
    for r in rows:
        if base is not None:
            r["fwd_bwd_vs_sdpa"] = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| batch | length | heads | k | contender | fwd ms | fwd+bwd ms | bwd ms | vs SDPA | peak MiB |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["name"] + (f" ({r['algorithm']})" if "algorithm" in r else "")
        ratio = f"{r['fwd_bwd_vs_sdpa']:.2f}x" if "fwd_bwd_vs_sdpa" in r else ""
        peak = f"{r['peak_mib']:.1f}" if "peak_mib" in r else ""
        lines.append(
            f"| {r['batch']} | {r['length']} | {r['heads']} | {r['dim_k']} | {name} | {r['fwd_ms']:.1f} | "
            f"{r['fwd_bwd_ms']:.1f} | {r['bwd_ms']:.1f} | {ratio} | {peak} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--heads", type=int, nargs="+", default=[4])
    p.add_argument("--dim-k", type=int, nargs="+", default=[16])
    p.add_argument("--dim", type=int, default=256, help="model width (256)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per contender (at least 3 run)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forward + backward calls per contender (1)")
    p.add_argument("--budget-s", type=float, default=60.0, help="stop repeating a case after this many seconds")
    p.add_argument("--memory", action="store_true", help="also measure peak memory (slow on CPU)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for batch in args.batch:
        for length in args.lengths:
            for heads in args.heads:
                for dim_k in args.dim_k:
                    case = run_case(args, batch, length, heads, dim_k)
                    rows += case
                    print(table(case).split("\n", 2)[2], flush=True)
    print(f"\ndevice {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}, width {args.dim}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
