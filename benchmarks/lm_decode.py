"""Prefill time and decoding speed of the character LMs against the context length.

``lambda_lm_tiny`` (global relative positions, and a 63-wide local scope) against ``transformer_lm_tiny`` with its
key/value cache, all built with ``max_length`` = the longest context + the decoded tokens, batch 1, eval mode,
``no_grad``. Per context: ``prefill`` of the whole prompt (ms), then ``--new`` tokens fed one by one with ``step``
(tokens per second of wall-clock time, and per CPU-second of this process, which is less sensitive to the load of
a shared machine). The models are interleaved within each repetition; medians over ``--reps``.

    python benchmarks/lm_decode.py --contexts 1024 2048 4096 8192 --new 16 --reps 3 --threads 1

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

import lambdanet

MODELS = {
    "lambda global": ("lambda_lm_tiny", {}),
    "lambda scope 63": ("lambda_lm_tiny", {"scope": 63}),
    "transformer + KV cache": ("transformer_lm_tiny", {}),
}


def measure(models: dict, context: int, new: int, reps: int) -> list[dict]:
    prompt = torch.randint(0, 128, (1, context), generator=torch.Generator().manual_seed(context))
    nxt = torch.randint(0, 128, (new,), generator=torch.Generator().manual_seed(1))
    res = {n: {"prefill": [], "wall": [], "cpu": []} for n in models}
    for _ in range(reps):
        for name, model in models.items():  # interleaved
            with torch.no_grad():
                t0 = time.perf_counter()
                _, state = model.prefill(prompt)
                res[name]["prefill"].append(time.perf_counter() - t0)
                w0, c0 = time.perf_counter(), time.process_time()
                for i in range(new):
                    model.step(nxt[i : i + 1], state)
                res[name]["wall"].append(new / (time.perf_counter() - w0))
                res[name]["cpu"].append(new / max(time.process_time() - c0, 1e-9))
    rows = []
    for name, r in res.items():
        rows.append(
            {
                "context": context,
                "model": name,
                "prefill_ms": statistics.median(r["prefill"]) * 1e3,
                "tok_s_wall": statistics.median(r["wall"]),
                "tok_per_cpu_s": statistics.median(r["cpu"]),
            }
        )
    base = rows[-1]
    for r in rows:
        r["prefill_vs_transformer"] = r["prefill_ms"] / base["prefill_ms"]
        r["decode_vs_transformer"] = r["tok_per_cpu_s"] / base["tok_per_cpu_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--new", type=int, default=16, help="tokens decoded after each prefill (16)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    max_length = max(args.contexts) + args.new
    names = [*(m for m in args.models if m != "transformer + KV cache"), "transformer + KV cache"]
    models = {n: lambdanet.create_model(MODELS[n][0], max_length=max_length, **MODELS[n][1]).eval() for n in names}
    rows = []
    print("| context | model | prefill ms | vs Transformer | decode tok/s (wall) | tok per CPU-s | vs Transformer |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for context in args.contexts:
        for r in measure(models, context, args.new, args.reps):
            rows.append(r)
            print(
                f"| {context} | {r['model']} | {r['prefill_ms']:.0f} | {r['prefill_vs_transformer']:.2f}x | "
                f"{r['tok_s_wall']:.0f} | {r['tok_per_cpu_s']:.0f} | {r['decode_vs_transformer']:.2f}x |",
                flush=True,
            )
    print(f"\nthreads {torch.get_num_threads()}, torch {torch.__version__}, max_length {max_length}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
