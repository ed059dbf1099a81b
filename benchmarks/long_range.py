"""Long-range comparison on the Pathfinder-style task (results and commands in docs/long_range.md).

Rows (all ``lambda_net_tiny`` from the registry, same data and schedule: the ``pathfinder_*`` recipes):

- ``lambda_global``: one lambda layer whose position lambdas cover the whole 16x16 map (scope 31 at 32x32 input,
  ``image_size - 1`` in general);
- ``conv_matched``: no lambda layer, widened to the same parameters and multiply-accumulates;
- ``lambda_scope3``: the lambda network with a 3x3 position scope (its content lambda stays global);
- ``lambda_content``: the lambda network without position lambdas (``position=False``).

Protocol, per row: train with every learning rate on the first seed at ``--sweep-difficulty`` (medium) and keep the
rate with the best validation accuracy; at that rate, train every seed at every difficulty of ``--difficulties``.
Every run's best checkpoint (by validation) is tested on ``--eval-samples`` test images of each difficulty (a test
stream the training images never come from). Reported: per row and difficulty, the test accuracy of the networks
trained at that difficulty, mean and standard deviation over the seeds; and how the networks trained at the sweep
difficulty do on the other two (a transfer check, dashed in the plot).

Each invocation merges its runs into ``<out>/results.json`` (other rows' runs are kept, and a repeated command goes
on where it stopped), so one command per row builds the whole comparison; the summary and
``accuracy_vs_difficulty.png`` cover every row recorded so far.

Usage::

    python benchmarks/long_range.py --rows lambda_global --out runs/long_range        # one row: 11 runs
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
    return max(_val_curve(run_dir), default=None) if (run_dir / "metrics.csv").is_file() else None


def _config(args: argparse.Namespace, recipe: str, over: dict[str, Any], difficulty: str, samples: int, **extra: Any):
    data = {"pathfinder_difficulty": difficulty, "image_size": args.image_size, "generated_samples": samples}
    return load_config(
        recipe,
        {"model": {"overrides": over}, "data": {**data, "root": args.data_root, "num_workers": 0}, **extra},
    )


def _train(
    args: argparse.Namespace, row: str, difficulty: str, lr: float, seed: int, test_sets: dict[str, Any]
) -> dict[str, Any]:
    recipe, extra = ROWS[row]
    over = _overrides(recipe, extra, args.image_size)
    name = f"{row}-{difficulty}-lr{lr:g}-s{seed}"
    run_dir = Path(args.out) / "runs" / name
    cfg = _config(
        args,
        recipe,
        over,
        difficulty,
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
        "difficulty": difficulty,
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
    same = ("samples", "epochs", "image_size", "eval_samples")
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old and any(old["args"][k] != vars(args)[k] for k in same):
        raise SystemExit(f"--out {out} holds runs with other {', '.join(same)}; choose another --out")
    done = {_key(r): r for r in old.get("runs", [])}
    rows: dict[str, dict[str, Any]] = {}
    test_sets = {
        d: build_splits(_config(args, ROWS[args.rows[0]][0], {}, d, 10 * args.eval_samples).data).test
        for d in DIFFICULTIES
    }

    def save() -> None:  # merge with what other invocations wrote (they may run at the same time)
        with open(out / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = json.loads(path.read_text()) if path.is_file() else {}
            runs = list({**{_key(r): r for r in old.get("runs", [])}, **done}.values())
            payload = {"args": vars(args), "rows": {**old.get("rows", {}), **rows}, "runs": runs}
            payload["summary"] = _summarise(runs, args)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(payload, indent=2) + "\n")
            tmp.replace(path)

    def get(row: str, difficulty: str, lr: float, seed: int) -> dict[str, Any]:
        if (row, difficulty, lr, seed) not in done:  # a repeated command goes on where it stopped
            done[row, difficulty, lr, seed] = _train(args, row, difficulty, lr, seed, test_sets)
            save()
        return done[row, difficulty, lr, seed]

    for row in args.rows:
        rows[row] = _row_info(args, row)
        sweep = [get(row, args.sweep_difficulty, lr, args.seeds[0]) for lr in args.lrs]
        best = max(sweep, key=lambda r: r["best_val_acc1"] or 0.0)["lr"]
        mine = sweep + [get(row, d, best, seed) for d in args.difficulties for seed in args.seeds]
        mine = list({_key(r): r for r in mine}.values())
        rows[row]["seconds"] = round(sum(r["seconds"] for r in mine), 1)
        rows[row]["cpu_seconds"] = round(sum(r["cpu_seconds"] for r in mine), 1)
        save()
    results = json.loads(path.read_text())
    _plot(results, out / "accuracy_vs_difficulty.png")
    return results


def _key(r: dict[str, Any]) -> tuple[str, str, float, int]:
    return r["row"], r["difficulty"], r["lr"], r["seed"]


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per row: the learning rate with the best validation accuracy in the sweep (first seed, sweep difficulty);
    at that rate, per training difficulty, the test accuracy on the same difficulty over the seeds, and how the
    networks trained at the sweep difficulty do on the other difficulties."""
    summary: dict[str, dict[str, Any]] = {}
    for row in sorted({r["row"] for r in runs}):
        sweep = {r["lr"]: r for r in runs if _key(r)[:2] == (row, args.sweep_difficulty) and r["seed"] == args.seeds[0]}
        if not sweep:
            continue
        lr = max(sweep, key=lambda k: sweep[k]["best_val_acc1"] or 0.0)
        chosen = [r for r in runs if r["row"] == row and r["lr"] == lr and r["seed"] in args.seeds]
        trained = {r["difficulty"] for r in chosen}
        transfer = [r for r in chosen if r["difficulty"] == args.sweep_difficulty]
        summary[row] = {
            "lr": lr,
            "sweep_val_acc1": {f"{k:g}": r["best_val_acc1"] for k, r in sorted(sweep.items())},
            "test_acc1": {
                d: {**_mean_std([r["test_acc1_by_difficulty"][d] for r in chosen if r["difficulty"] == d]),
                    "seeds": sum(r["difficulty"] == d for r in chosen)}
                for d in DIFFICULTIES if d in trained
            },
            f"trained_on_{args.sweep_difficulty}": {
                d: _mean_std([r["test_acc1_by_difficulty"][d] for r in transfer]) for d in DIFFICULTIES
            },
        }  # fmt: skip
    return summary


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = results["args"]
    sweep = args["sweep_difficulty"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (row, cell) in enumerate(results["summary"].items()):
        diffs = [d for d in DIFFICULTIES if d in cell["test_acc1"]]
        means = [cell["test_acc1"][d]["mean"] for d in diffs]
        stds = [cell["test_acc1"][d]["std"] for d in diffs]
        label = f"{row} ({results['rows'][row]['params'] / 1e3:.0f}k params, lr {cell['lr']:g})"
        ax.errorbar(diffs, means, yerr=stds, marker="o", capsize=3, label=label, color=f"C{i}")
        transfer = cell[f"trained_on_{sweep}"]
        ax.plot(list(transfer), [c["mean"] for c in transfer.values()], linestyle="--", color=f"C{i}", alpha=0.5)
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_xlabel(f"difficulty (curves 10 / 16 / 22 px at 32x32); dashed: trained on {sweep}")
    ax.set_ylabel(f"test accuracy (mean, std over {len(args['seeds'])} seeds)")
    ax.set_title(f"Pathfinder-style {args['image_size']}px, {args['samples']} training images, {args['epochs']} epochs")
    ax.set_ylim(0.4, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _val_curve(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["val/acc1"]) for r in csv.DictReader(f) if r.get("val/acc1")]


def plot_curves(run_dirs: list[Path], path: Path) -> None:
    """Validation accuracy per epoch of finished ``lambdanet train`` runs (their ``metrics.csv``), one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for run_dir in run_dirs:
        curve = _val_curve(run_dir)
        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=run_dir.name)
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--difficulties", nargs="+", default=list(DIFFICULTIES), choices=DIFFICULTIES, help="trained")
    p.add_argument("--sweep-difficulty", default="medium", choices=DIFFICULTIES, help="where the rate is chosen")
    p.add_argument("--eval-samples", type=int, default=2000, help="test images per difficulty")
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--samples", type=int, default=4000, help="training images (val and test get a tenth each)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the documented figures use 2)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="runs/long_range")
    p.add_argument("--minimal", action="store_true", help="1 epoch, 512 images, one lr and seed, 64 test images")
    p.add_argument("--curves", nargs="+", type=Path, help="only plot these run directories' validation curves")
    args = p.parse_args(argv)
    if args.curves:
        plot_curves(args.curves, Path(args.out) / "validation_curves.png")
        return 0
    if args.minimal:
        args.epochs, args.samples, args.lrs, args.seeds, args.eval_samples = 1, 512, [2e-3], [0], 64
        args.difficulties = [args.sweep_difficulty]
    torch.set_num_threads(args.threads)
    results = run(args)
    for row, cell in results["summary"].items():
        accs = ", ".join(f"{d} {c['mean']:.3f}+-{c['std']:.3f} ({c['seeds']})" for d, c in cell["test_acc1"].items())
        info = results["rows"][row]
        print(f"{row}: lr {cell['lr']:g}, {accs} ({info['cpu_seconds'] / 60:.1f} CPU-min, {info['params']} params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
