"""Compare the causal lambda LM with a Transformer of the same size, in one run (results in docs/sequences.md).

1. Trains both models with the same recipe (``lm_tiny``, through ``lambdanet.train.run.fit``) and reports bits per
   character on the validation and test splits of the embedded corpus, and training tokens/s during the run.
2. Measures training and inference tokens/s of both on the same batch, interleaving the models so that both see
   the same machine load (median over repeats; wall clock and process CPU time).
3. Measures peak tensor memory against sequence length (batch 1; inference without gradients, and forward +
   backward with the activations saved for backward), counted op by op with a dispatch mode; parameters and their
   existing storage are not counted. Models are built with ``max_length`` = the measured length.
4. Measures the same for one causal lambda layer: the prefix-sum path against the explicit (n, m) mask path.

Usage::

    python benchmarks/lm_compare.py --out runs/lm_compare             # everything (about 10-20 min on 2 cores)
    python benchmarks/lm_compare.py --skip-train --lengths 256 1024   # throughput and memory only
    python benchmarks/lm_compare.py --skip-train --skip-throughput --lengths --out runs/lm_layer_memory
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lambdanet

MODELS = ("lambda_lm_tiny", "transformer_lm_tiny")
# Memory variants: name -> (registry model, overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lambda (global, auto)": ("lambda_lm_tiny", {}),
    "lambda (global, fft)": ("lambda_lm_tiny", {"algorithm": "fft"}),
    "lambda (scope 63, conv)": ("lambda_lm_tiny", {"scope": 63, "algorithm": "conv"}),
    "transformer": ("transformer_lm_tiny", {}),
}


class _PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage created by ops inside the context (fused ops' private workspace excluded).

    Storages are tracked through their Python objects, which PyTorch keeps alive exactly as long as the storage
    itself (also when only autograd holds it), so activations saved for backward are counted until backward frees
    them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = id(storage), storage.nbytes()
                if nbytes and key not in self._seen:
                    self._seen.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def _peak_mib(fn: Any) -> float:
    with _PeakTensorMemory() as mode:
        fn()
    return round(mode.peak / 2**20, 2)


def memory_vs_length(lengths: list[int], threads: int) -> list[dict[str, Any]]:
    """Peak tensor memory of one sequence (batch 1) against length: inference (no grad) and forward + backward."""
    torch.set_num_threads(threads)
    rows = []
    for length in lengths:
        for variant, (name, overrides) in VARIANTS.items():
            model = lambdanet.create_model(name, vocab_size=128, max_length=length, **overrides)
            tokens = torch.randint(0, 128, (1, length))

            def infer(model: Any = model, tokens: torch.Tensor = tokens) -> None:
                with torch.no_grad():
                    model(tokens)

            def train(model: Any = model, tokens: torch.Tensor = tokens) -> None:
                model(tokens).logsumexp(-1).mean().backward()

            rows.append(
                {
                    "variant": variant,
                    "length": length,
                    "infer_peak_mib": _peak_mib(infer),
                    "train_peak_mib": _peak_mib(train),
                }
            )
            print(rows[-1], flush=True)
    return rows


def layer_memory(lengths: list[int], threads: int) -> list[dict[str, Any]]:
    """One causal lambda layer (dim 128, |k| 16, 4 heads, content only, batch 1): the prefix-sum path against the
    same layer given the causal mask explicitly (the general masked path, which forms (n, m) key weights)."""
    torch.set_num_threads(threads)
    layer = lambdanet.LambdaLayer1d(128, dim_k=16, heads=4, position=False, causal=True)
    rows = []
    for length in lengths:
        x = torch.randn(1, length, 128, requires_grad=True)
        mask = torch.ones(length, length, dtype=torch.bool).tril()
        row: dict[str, Any] = {"length": length}
        for path, m in (("prefix_sums", None), ("masked", mask)):
            row[f"{path}_train_peak_mib"] = _peak_mib(lambda m=m, x=x: layer(x, m).sum().backward())
        rows.append(row)
        print(row, flush=True)
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


def train_both(recipe: str, out: Path, max_steps: int | None, seeds: list[int]) -> list[dict[str, Any]]:
    import csv

    from lambdanet.train.config import load_config
    from lambdanet.train.run import fit

    rows = []
    for seed in seeds:
        for n in MODELS:
            name = n if seed == 0 else f"{n}-seed{seed}"
            over: dict[str, Any] = {
                "seed": seed,
                "model": {"name": n},
                "system": {"out_dir": str(out), "run_name": name, "progress_bar": False},
            }
            if max_steps is not None:
                over["train"] = {"max_steps": max_steps}
            cfg = load_config(recipe, over)
            row = {"seed": seed, **fit(cfg, argv=["-c", recipe, "--seed", str(seed)])}
            with open(out / name / "metrics.csv", newline="") as f:  # Lightning's ThroughputMonitor, during the run
                key = "train/device/items_per_sec"
                rates = [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
            row["tokens_per_s"] = round(statistics.median(rates), 1) if rates else None
            rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/lm_compare", help="output folder (results.json and the two run folders)")
    p.add_argument("--recipe", default="lm_tiny", help="recipe name or YAML path")
    p.add_argument("--max-steps", type=int, default=None, help="override the recipe's train.max_steps")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="train both models once per seed")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1: stable timings on a shared machine)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128, help="sequence length of the throughput measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lengths", type=int, nargs="*", default=[128, 256, 512, 1024, 2048])
    p.add_argument("--layer-lengths", type=int, nargs="*", default=[512, 1024, 2048, 4096])
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads}
    if not args.skip_train:
        results["training"] = train_both(args.recipe, out, args.max_steps, args.seeds)
    if not args.skip_throughput:
        results["throughput"] = throughput(args.batch, args.length, args.repeats, args.threads)
    results["memory"] = memory_vs_length(args.lengths, args.threads) if args.lengths else []
    results["layer_memory"] = layer_memory(args.layer_lengths, args.threads) if args.layer_lengths else []
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
