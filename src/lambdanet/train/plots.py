"""Loss and accuracy curves of a run, drawn from the rows of its ``metrics.csv``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["plot_curves"]

_PANELS = (
    ("loss", (("train/loss_epoch", "train"), ("val/loss", "val"))),
    ("top-1 accuracy", (("train/acc1", "train"), ("val/acc1", "val"))),
)


def plot_curves(rows: Iterable[Mapping[str, str]], png_path: str | Path, title: str = "") -> Path:
    """Draw train/val loss and accuracy per epoch into ``png_path`` (later rows of an epoch win, e.g. after resume).

    Raises:
        ValueError: when the rows hold no epoch-level loss or accuracy.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    metrics: dict[str, dict[int, float]] = {}  # {metric: {epoch: value}}
    for row in rows:
        for key, _ in (s for _, series in _PANELS for s in series):
            try:
                epoch, value = int(float(row["epoch"])), float(row[key])
            except (KeyError, TypeError, ValueError):  # absent or empty in this row
                continue
            if math.isfinite(value):
                metrics.setdefault(key, {})[epoch] = value
    if not metrics:
        raise ValueError("the metrics hold no epoch-level loss or accuracy to plot")
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, (ylabel, series) in zip(axes, _PANELS, strict=True):
        for key, label in series:
            if key in metrics:
                epochs = sorted(metrics[key])
                ax.plot([e + 1 for e in epochs], [metrics[key][e] for e in epochs], marker=".", label=label)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, never 2.5
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return Path(png_path)
