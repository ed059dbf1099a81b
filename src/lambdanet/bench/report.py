"""Output of ``lambdanet bench``: terminal/markdown tables, JSON and CSV files, and matplotlib plots.

The plots show time and memory against the number of positions on log-log axes, one line per implementation,
which makes the quadratic growth of attention maps against lambda layers visible (Bello, "LambdaNetworks",
ICLR 2021, arXiv:2102.08602, Table 4).
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "format_table", "plot_sweep", "write_csv", "write_json"]


def environment() -> dict[str, Any]:
    """Machine and versions, recorded with every result."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        from importlib.metadata import version

        env["lambda_networks"] = version("lambda-networks")
    except Exception:  # not installed
        env["lambda_networks"] = None
    return env


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    return str(value)


def format_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    markdown: bool = False,
) -> str:
    """A table of ``rows`` with ``columns`` = [(key, header), ...]; missing keys print as "-".

    Args:
        rows: dicts of values (floats get 2 decimals, or 2 significant digits when tiny).
        columns: which keys to show, in order, with their headers.
        markdown: a GitHub markdown table instead of aligned plain text.
    """
    if not columns:
        raise ValueError("columns must name at least one (key, header) pair")
    headers = [h for _, h in columns]
    body = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    numeric = [all(_is_number(r.get(key)) for r in rows if r.get(key) is not None) for key, _ in columns]
    if markdown:
        align = ["---:" if num else "---" for num in numeric]
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in body])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_json(path: Path, result: dict[str, Any]) -> Path:
    """Write ``result`` (with :func:`environment` added under "environment") as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "environment": environment()}, indent=1, default=str) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as CSV with the union of their keys as columns (first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in keys})
    return path


def plot_sweep(
    rows: Sequence[dict[str, Any]],
    path: Path,
    *,
    metrics: Sequence[tuple[str, str]] = (("fwd_bwd_ms", "forward + backward (ms)"), ("saved_mib", "saved (MiB)")),
    context: str = "global",
    title: str = "",
) -> Path | None:
    """Log-log plot of each metric against positions n, one line per implementation; ``None`` if nothing to plot.

    Skipped cases are absent from their line (the line stops where the implementation no longer fits).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = [r for r in rows if r.get("context") == context and any(r.get(k) for k, _ in metrics)]
    if not picked:
        return None
    names = list(dict.fromkeys(r["name"] for r in picked))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for name in names:
            pts = sorted((r["n"], r[key]) for r in picked if r["name"] == name and r.get(key))
            if pts:
                style = "--" if name.startswith("attention") else "-"
                ax.plot(*zip(*pts), style, marker="o", markersize=3, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("positions n = S x S")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
