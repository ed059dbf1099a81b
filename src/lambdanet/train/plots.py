"""Loss and accuracy curves of a run, drawn from its ``metrics.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["plot_curves", "read_epoch_metrics"]


def read_epoch_metrics(csv_path: str | Path) -> dict[str, dict[int, float]]:
    """Per-epoch values of every logged metric: ``{metric: {epoch: value}}`` (later rows win, e.g. after resume)."""
    out: dict[str, dict[int, float]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch")
            if epoch in (None, ""):
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    out.setdefault(key, {})[int(float(epoch))] = v
    return out


def plot_curves(csv_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Draw train/val loss and accuracy per epoch into ``png_path``.

    Raises:
        ValueError: when the CSV holds no epoch-level loss or accuracy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = read_epoch_metrics(csv_path)
    panels = [
        ("loss", [("train/loss_epoch", "train"), ("val/loss", "val")]),
        ("top-1 accuracy", [("train/acc1", "train"), ("val/acc1", "val")]),
    ]
    if not any(key in metrics for _, series in panels for key, _ in series):
        raise ValueError(f"{csv_path} has no epoch-level loss or accuracy to plot")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (ylabel, series) in zip(axes, panels, strict=True):
        for key, label in series:
            if key in metrics:
                epochs = sorted(metrics[key])
                ax.plot([e + 1 for e in epochs], [metrics[key][e] for e in epochs], marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, never 2.5
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
