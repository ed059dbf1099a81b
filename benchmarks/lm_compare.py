"""Compare the causal lambda LM with a Transformer of the same size, in one run (results in docs/sequences.md).

1. Trains both models with the same recipe (``configs/lm/lm_tiny.yaml``) and reports bits per character on the
   validation and test splits of the embedded corpus, and training tokens/s during the run.
2. Measures training and inference tokens/s of both on the same batch, interleaving the models so that both see
   the same machine load (median over repeats; wall clock and process CPU time).
3. Measures peak memory against sequence length: every (model, length) runs in a fresh subprocess (batch 1,
   forward without gradients, then forward + backward) and reports the growth of the peak resident set size over
   the process's size after building the model. Models are built with ``max_length`` = the longest length.

Usage::

    python benchmarks/lm_compare.py --out runs/lm_compare             # everything (about 10-20 min on 2 cores)
    python benchmarks/lm_compare.py --skip-train --lengths 256 1024   # throughput and memory only
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import lambdanet

MODELS = ("lambda_lm_tiny", "transformer_lm_tiny")
# Memory variants: name -> (registry model, overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lambda (global, auto)": ("lambda_lm_tiny", {}),
    "lambda (global, fft)": ("lambda_lm_tiny", {"algorithm": "fft"}),
    "lambda (scope 63, conv)": ("lambda_lm_tiny", {"scope": 63, "algorithm": "conv"}),
    "transformer": ("transformer_lm_tiny", {}),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _memory_child(variant: str, length: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    name, overrides = VARIANTS[variant]
    model = lambdanet.create_model(name, vocab_size=128, max_length=length, **overrides)
    tokens = torch.randint(0, 128, (1, length))
    model(torch.randint(0, 128, (1, 8))).sum().backward()  # warm up allocator and kernels at a tiny length
    model.zero_grad(set_to_none=False)
    base = _rss_mib()
    with torch.no_grad():
        model(tokens)
    infer = _rss_mib() - base
    model(tokens).logsumexp(-1).mean().backward()
    train = _rss_mib() - base
    return {"variant": variant, "length": length, "infer_peak_mib": round(infer, 1), "train_peak_mib": round(train, 1)}


def memory_vs_length(lengths: list[int], threads: int) -> list[dict[str, Any]]:
    rows = []
    for length in lengths:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--memory-child", variant, str(length), "--threads", str(threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                rows.append({"variant": variant, "length": length, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return rows


def throughput(batch: int, length: int, repeats: int, threads: int) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    models = {n: lambdanet.create_model(n, vocab_size=103) for n in MODELS}
    optims = {n: torch.optim.AdamW(m.parameters(), lr=1e-3) for n, m in models.items()}
    tokens = torch.randint(0, 103, (batch, length + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "train_cpu": [], "infer": []} for n in MODELS}
    for r in range(repeats + 1):  # the first round warms up
        for n, model in models.items():
            wall, cpu = time.perf_counter(), time.process_time()
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            optims[n].step()
            optims[n].zero_grad()
            train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
            wall = time.perf_counter()
            with torch.no_grad():
                model(x)
            infer_wall = time.perf_counter() - wall
            if r:
                times[n]["train"].append(train_wall)
                times[n]["train_cpu"].append(train_cpu)
                times[n]["infer"].append(infer_wall)
    rows = []
    for n in MODELS:
        t = {k: statistics.median(v) for k, v in times[n].items()}
        rows.append(
            {
                "model": n,
                "params": sum(p.numel() for p in models[n].parameters()),
                "batch": batch,
                "length": length,
                "train_tokens_per_s": round(batch * length / t["train"], 1),
                "train_tokens_per_cpu_s": round(batch * length / t["train_cpu"], 1),
                "infer_tokens_per_s": round(batch * length / t["infer"], 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def train_both(recipe: str, out: Path, max_steps: int | None) -> list[dict[str, Any]]:
    from lambdanet.train.lm import fit_lm, load_lm_config

    rows = []
    for n in MODELS:
        over: dict[str, Any] = {"model": {"name": n}, "system": {"out_dir": str(out), "progress_bar": False}}
        if max_steps is not None:
            over["train"] = {"max_steps": max_steps}
        cfg = load_lm_config(recipe, over)
        rows.append(fit_lm(cfg, argv=["-c", recipe], run_dir=out / n))
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/lm_compare", help="output folder (results.json and the two run folders)")
    p.add_argument("--recipe", default="configs/lm/lm_tiny.yaml")
    p.add_argument("--max-steps", type=int, default=None, help="override the recipe's train.max_steps")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128, help="sequence length of the throughput measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lengths", type=int, nargs="*", default=[128, 256, 512, 1024, 2048])
    p.add_argument("--memory-child", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        print(json.dumps(_memory_child(args.memory_child[0], int(args.memory_child[1]), args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads}
    if not args.skip_train:
        results["training"] = train_both(args.recipe, out, args.max_steps)
    results["throughput"] = throughput(args.batch, args.length, args.repeats, args.threads)
    results["memory"] = memory_vs_length(args.lengths, args.threads) if args.lengths else []
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
