"""Long-range comparison on the Pathfinder-style task (results and commands in docs/long_range.md).

Rows (all ``lambda_net_tiny`` from the registry, same data and schedule: the ``pathfinder_*`` recipes):

- ``lambda_global``: one lambda layer whose position lambdas cover the whole 16x16 map (scope 31 at 32x32 input,
  ``image_size - 1`` in general);
- ``conv_matched``: no lambda layer, widened to the same parameters and multiply-accumulates;
- ``lambda_scope3``: the lambda network with a 3x3 position scope (its content lambda stays global);
- ``lambda_content``: the lambda network without position lambdas (``position=False``).

Protocol, per row: train at ``--difficulty`` with every learning rate on the first seed; pick the rate with the best
validation accuracy; train the other seeds at that rate. Each run's best checkpoint (by validation) is then tested on
the test split of every difficulty in ``--eval-difficulties`` (``--eval-samples`` images each; the training
difficulty's test images are a prefix of the same stream, never seen in training). ``--full-grid`` trains every
rate on every seed instead and picks the rate by the mean over seeds.

Each invocation merges its rows into ``<out>/results.json`` (runs of other rows are kept), so one command per row
builds up the whole comparison; the summary and ``accuracy_vs_difficulty.png`` cover every row recorded so far.

Usage::

    python benchmarks/long_range.py --rows lambda_global --out runs/long_range        # one row, ~20 CPU-minutes
    python benchmarks/long_range.py --minimal --out runs/long_range_minimal           # 1 epoch on 512 images
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import lambdanet
from lambdanet.data.loader import build_splits
from lambdanet.stats import model_stats
from lambdanet.train.config import load_config
from lambdanet.train.evaluate import evaluate
from lambdanet.train.run import fit

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "lambda_global": ("pathfinder_lambda_global", {}),
    "conv_matched": ("pathfinder_conv_matched", {}),
    "lambda_scope3": ("pathfinder_lambda_scope3", {}),
    "lambda_content": ("pathfinder_lambda_global", {"position": False}),
}
DIFFICULTIES = ("easy", "medium", "hard")


def _overrides(recipe: str, extra: dict[str, Any], image_size: int) -> dict[str, Any]:
    over = dict(load_config(recipe).model.overrides)
    if "scope" in over and over["scope"] > 3:
        over["scope"] = image_size - 1  # global at the last stage (side image_size / 2) for any image size
    return {**over, **extra}


def _best_val(run_dir: Path) -> float | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path) as f:
        vals = [float(r["val/acc1"]) for r in csv.DictReader(f) if r.get("val/acc1")]
    return max(vals) if vals else None


def _config(args: argparse.Namespace, recipe: str, over: dict[str, Any], difficulty: str, samples: int, **extra: Any):
    data = {"pathfinder_difficulty": difficulty, "image_size": args.image_size, "generated_samples": samples}
    return load_config(
        recipe,
        {"model": {"overrides": over}, "data": {**data, "root": args.data_root, "num_workers": 0}, **extra},
    )


def _train(args: argparse.Namespace, row: str, lr: float, seed: int, test_sets: dict[str, Any]) -> dict[str, Any]:
    recipe, extra = ROWS[row]
    over = _overrides(recipe, extra, args.image_size)
    name = f"{row}-{args.difficulty}-lr{lr:g}-s{seed}"
    run_dir = Path(args.out) / "runs" / name
    cfg = _config(
        args,
        recipe,
        over,
        args.difficulty,
        args.samples,
        optim={"lr": lr},
        train={"epochs": args.epochs},
        seed=seed,
        system={"out_dir": str(run_dir.parent), "run_name": name, "progress_bar": False},
    )
    wall, cpu = time.perf_counter(), time.process_time()
    res = fit(cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model, _, _ = lambdanet.load_for_inference(run_dir / "checkpoints" / "best.ckpt")
    tests = {d: evaluate(model, ds, batch_size=256)["top1"] for d, ds in test_sets.items()}
    return {
        "row": row,
        "difficulty": args.difficulty,
        "lr": lr,
        "seed": seed,
        "best_val_acc1": _best_val(run_dir),
        "test_acc1": res.get("test/acc1"),
        "test_acc1_by_difficulty": tests,
        "seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
    }


def _row_info(args: argparse.Namespace, row: str) -> dict[str, Any]:
    recipe, extra = ROWS[row]
    over = _overrides(recipe, extra, args.image_size)
    stats = model_stats(
        lambdanet.create_model("lambda_net_tiny", **over, num_classes=2, in_chans=1),
        (1, args.image_size, args.image_size),
    )
    return {"recipe": recipe, "overrides": over, "params": stats.params, "macs": stats.macs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    runs: list[dict[str, Any]] = []
    rows: dict[str, dict[str, Any]] = {}
    recipe = ROWS[args.rows[0]][0]
    test_sets = {
        d: build_splits(_config(args, recipe, {}, d, 10 * args.eval_samples).data).test for d in args.eval_difficulties
    }

    def save() -> None:  # merge with the rows other invocations wrote (they may run at the same time)
        with open(out / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = json.loads(path.read_text()) if path.is_file() else {}
            all_runs = [r for r in old.get("runs", []) if r["row"] not in args.rows] + runs
            all_rows = {**{k: v for k, v in old.get("rows", {}).items() if k not in args.rows}, **rows}
            summary = _summarise(all_runs, args.full_grid)
            payload = {"args": vars(args), "rows": all_rows, "runs": all_runs, "summary": summary}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(payload, indent=2) + "\n")
            tmp.replace(path)

    for row in args.rows:
        start = time.perf_counter()
        rows[row] = _row_info(args, row)
        sweep_seeds = args.seeds if args.full_grid else args.seeds[:1]
        mine = [_train(args, row, lr, seed, test_sets) for lr in args.lrs for seed in sweep_seeds]
        runs.extend(mine)
        save()
        if not args.full_grid:
            best = max(mine, key=lambda r: r["best_val_acc1"] or 0.0)["lr"]
            for seed in args.seeds[1:]:
                runs.append(_train(args, row, best, seed, test_sets))
                save()
        rows[row]["seconds"] = round(time.perf_counter() - start, 1)
        rows[row]["cpu_seconds"] = round(sum(r["cpu_seconds"] for r in runs if r["row"] == row), 1)
        save()
    results = json.loads(path.read_text())
    _plot(results, out / "accuracy_vs_difficulty.png")
    return results


def _summarise(runs: list[dict[str, Any]], full_grid: bool) -> dict[str, dict[str, Any]]:
    """Per row: the learning rate chosen on validation and its test accuracy per difficulty over the seeds."""
    summary: dict[str, dict[str, Any]] = {}
    for row in sorted({r["row"] for r in runs}):
        mine = [r for r in runs if r["row"] == row]
        by_lr: dict[float, list[dict[str, Any]]] = {}
        for r in mine if full_grid else [r for r in mine if r["seed"] == mine[0]["seed"]]:
            by_lr.setdefault(r["lr"], []).append(r)
        lr = max(by_lr, key=lambda k: statistics.fmean(r["best_val_acc1"] or 0.0 for r in by_lr[k]))
        chosen = [r for r in mine if r["lr"] == lr]
        cells = {}
        for d in chosen[0]["test_acc1_by_difficulty"]:
            accs = [r["test_acc1_by_difficulty"][d] for r in chosen]
            cells[d] = {"mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        summary[row] = {
            "lr": lr,
            "seeds": len(chosen),
            "val_acc1_mean": statistics.fmean(r["best_val_acc1"] or 0.0 for r in chosen),
            "test_acc1": cells,
            "sweep": {f"{k:g}": statistics.fmean(r["best_val_acc1"] or 0.0 for r in v) for k, v in by_lr.items()},
        }
    return summary


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = results["args"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for row, cell in results["summary"].items():
        diffs = [d for d in DIFFICULTIES if d in cell["test_acc1"]]
        means = [cell["test_acc1"][d]["mean"] for d in diffs]
        stds = [cell["test_acc1"][d]["std"] for d in diffs]
        label = f"{row} ({results['rows'][row]['params'] / 1e3:.0f}k params, lr {cell['lr']:g})"
        ax.errorbar(diffs, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("test difficulty (curve length 10 / 16 / 22 pixels at 32x32)")
    ax.set_ylabel(f"test accuracy (mean, std over {len(args['seeds'])} seeds)")
    ax.set_title(f"Pathfinder-style {args['image_size']}px, trained on {args['difficulty']}, {args['samples']} images")
    ax.set_ylim(0.4, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--difficulty", default="medium", choices=DIFFICULTIES, help="training difficulty")
    p.add_argument("--eval-difficulties", nargs="+", default=list(DIFFICULTIES), choices=DIFFICULTIES)
    p.add_argument("--eval-samples", type=int, default=2000, help="test images per evaluation difficulty")
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--full-grid", action="store_true", help="every learning rate on every seed")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--samples", type=int, default=4000, help="training images (val and test get a tenth each)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the documented figures use 2)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="runs/long_range")
    p.add_argument("--minimal", action="store_true", help="1 epoch, 512 images, one lr and seed, 64 test images")
    args = p.parse_args(argv)
    if args.minimal:
        args.epochs, args.samples, args.lrs, args.seeds, args.eval_samples = 1, 512, [2e-3], [0], 64
    torch.set_num_threads(args.threads)
    results = run(args)
    for row, cell in results["summary"].items():
        accs = ", ".join(f"{d} {c['mean']:.3f}+-{c['std']:.3f}" for d, c in cell["test_acc1"].items())
        info = results["rows"][row]
        print(f"{row}: lr {cell['lr']:g}, {accs} ({info.get('seconds', 0) / 60:.1f} min, {info['params']} params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
