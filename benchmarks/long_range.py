"""Long-range comparison on the Pathfinder-style task (results and commands in docs/long_range.md).

Rows (all ``lambda_net_tiny`` from the registry, same data and schedule: the ``pathfinder_*`` recipes):

- ``lambda_global``: one lambda layer whose position lambdas cover the whole 16x16 map (scope 31 at 32x32 input,
  ``image_size - 1`` in general);
- ``conv_matched``: no lambda layer, widened to the same parameters and multiply-accumulates;
- ``lambda_scope3``: the lambda network with a 3x3 position scope;
- ``lambda_content``: the lambda network without position lambdas (``position=False``; needs the model to accept
  the argument, otherwise the row is reported as skipped).

Every row is trained for each learning rate and seed. For each row and difficulty the learning rate with the best
mean validation accuracy is chosen and its test accuracy reported as mean and standard deviation over the seeds.
Writes ``results.json`` (every run and the summary) and ``accuracy_vs_difficulty.png``.

Usage::

    python benchmarks/long_range.py --out runs/long_range                       # full: 4 rows x 3 lr x 3 seeds x 3
    python benchmarks/long_range.py --minimal --out runs/long_range_minimal     # 1 epoch on 512 images, a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lambdanet
from lambdanet.train.config import load_config
from lambdanet.train.run import fit

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "lambda_global": ("pathfinder_lambda_global", {}),
    "conv_matched": ("pathfinder_conv_matched", {}),
    "lambda_scope3": ("pathfinder_lambda_scope3", {}),
    "lambda_content": ("pathfinder_lambda_global", {"position": False}),
}
DIFFICULTIES = ("easy", "medium", "hard")


def _overrides(recipe: str, extra: dict[str, Any], image_size: int) -> dict[str, Any]:
    cfg = load_config(recipe)
    over = dict(cfg.model.overrides)
    if "scope" in over and over["scope"] > 3:
        over["scope"] = image_size - 1  # global at the last stage (side image_size / 2) for any image size
    over.update(extra)
    return over


def _best_val(run_dir: Path) -> float | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path) as f:
        vals = [float(r["val/acc1"]) for r in csv.DictReader(f) if r.get("val/acc1")]
    return max(vals) if vals else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for row in args.rows:
        recipe, extra = ROWS[row]
        over = _overrides(recipe, extra, args.image_size)
        try:  # a row whose model cannot be built (e.g. an argument the model lacks) is reported, not fatal
            lambdanet.create_model("lambda_net_tiny", **{**over, "num_classes": 2})
        except (TypeError, ValueError) as e:
            skipped[row] = f"{type(e).__name__}: {e}"
            print(f"skipping {row}: {skipped[row]}", file=sys.stderr)
            continue
        for difficulty in args.difficulties:
            for lr in args.lrs:
                for seed in args.seeds:
                    name = f"{row}-{difficulty}-lr{lr:g}-s{seed}"
                    cfg = load_config(
                        recipe,
                        {
                            "model": {"overrides": over},
                            "data": {
                                "pathfinder_difficulty": difficulty,
                                "image_size": args.image_size,
                                "generated_samples": args.samples,
                                "root": args.data_root,
                                "num_workers": 0,
                            },
                            "optim": {"lr": lr},
                            "train": {"epochs": args.epochs},
                            "seed": seed,
                            "system": {"out_dir": str(out / "runs"), "run_name": name, "progress_bar": False},
                        },
                    )
                    start = time.perf_counter()
                    res = fit(cfg)
                    runs.append(
                        {
                            "row": row,
                            "difficulty": difficulty,
                            "lr": lr,
                            "seed": seed,
                            "test_acc1": res.get("test/acc1"),
                            "best_val_acc1": _best_val(out / "runs" / name),
                            "seconds": round(time.perf_counter() - start, 1),
                        }
                    )
                    (out / "results.json").write_text(json.dumps({"runs": runs, "skipped": skipped}, indent=2))
    summary = _summarise(runs)
    results = {"args": vars(args), "runs": runs, "skipped": skipped, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(summary, args, out / "accuracy_vs_difficulty.png")
    return results


def _summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row and difficulty: the learning rate with the best mean validation accuracy and its test accuracy."""
    summary: dict[str, dict[str, Any]] = {}
    for row in sorted({r["row"] for r in runs}):
        for difficulty in DIFFICULTIES:
            cell = [r for r in runs if r["row"] == row and r["difficulty"] == difficulty]
            if not cell:
                continue
            by_lr: dict[float, list[dict[str, Any]]] = {}
            for r in cell:
                by_lr.setdefault(r["lr"], []).append(r)

            def val(rs: list[dict[str, Any]]) -> float:
                return statistics.fmean(r["best_val_acc1"] or 0.0 for r in rs)

            lr, chosen = max(by_lr.items(), key=lambda kv: val(kv[1]))
            tests = [r["test_acc1"] for r in chosen if r["test_acc1"] is not None]
            summary.setdefault(row, {})[difficulty] = {
                "lr": lr,
                "val_acc1_mean": val(chosen),
                "test_acc1_mean": statistics.fmean(tests) if tests else None,
                "test_acc1_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "seeds": len(tests),
            }
    return summary


def _plot(summary: dict[str, dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row, cells in summary.items():
        diffs = [d for d in DIFFICULTIES if d in cells]
        means = [cells[d]["test_acc1_mean"] or 0.0 for d in diffs]
        stds = [cells[d]["test_acc1_std"] for d in diffs]
        ax.errorbar(diffs, means, yerr=stds, marker="o", capsize=3, label=row)
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("difficulty (curve length, distractors)")
    ax.set_ylabel("test accuracy (mean, std over seeds)")
    ax.set_title(f"Pathfinder-style {args.image_size}px, {args.samples} training images, lr chosen on validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--difficulties", nargs="+", default=list(DIFFICULTIES), choices=list(DIFFICULTIES))
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=20000, help="training images (val and test get a tenth each)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="runs/long_range")
    p.add_argument("--minimal", action="store_true", help="1 epoch, 512 images, one lr and seed, medium only")
    args = p.parse_args(argv)
    if args.minimal:
        args.epochs, args.samples, args.lrs, args.seeds, args.difficulties = 1, 512, [2e-3], [0], ["medium"]
    results = run(args)
    for row, cells in results["summary"].items():
        line = ", ".join(
            f"{d} {c['test_acc1_mean']:.3f}+-{c['test_acc1_std']:.3f} (lr {c['lr']:g})" for d, c in cells.items()
        )
        print(f"{row}: {line}")
    for row, why in results["skipped"].items():
        print(f"{row}: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
