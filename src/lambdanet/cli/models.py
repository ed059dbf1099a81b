"""``lambdanet models [--format table|markdown|json|csv] [pattern]``: the model registry with parameters and MACs.

Counts come from :func:`lambdanet.model_stats` on the meta device (nothing is computed), at each model's native
input size, in the paper's convention (Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, App. E.2): GMACs are
multiply-accumulates; the paper's "FLOPS" are twice that.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

import torch

__all__ = ["main", "model_rows"]

FIELDS = ("name", "params_m", "gmacs", "input_size", "fixed_input_size", "source")


def model_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered model matching ``pattern``: name, params (M), GMACs, input size, fixed?, source."""
    import lambdanet

    rows = []
    for name in lambdanet.list_models(pattern):
        info = lambdanet.model_info(name)
        with torch.device("meta"):
            model = lambdanet.create_model(name)
        stats = lambdanet.model_stats(model, info.input_size)
        rows.append(
            {
                "name": name,
                "params_m": round(stats.params / 1e6, 3),
                "gmacs": round(stats.macs / 1e9, 3),
                "input_size": "x".join(str(s) for s in info.input_size),
                "fixed_input_size": bool(getattr(model, "fixed_input_size", info.fixed_input_size)),
                "source": info.paper_ref,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]], markdown: bool) -> str:
    headers = ["name", "params (M)", "GMACs", "input", "fixed size", "source"]
    body = [
        [
            r["name"],
            f"{r['params_m']:.3f}",
            f"{r['gmacs']:.3f}",
            r["input_size"],
            "yes" if r["fixed_input_size"] else "no",
            r["source"],
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---", "---:", "---:", "---", "---", "---"]) + "|"]
        lines += [
            "| " + " | ".join(f"`{row[0]}`" if i == 0 else row[i] for i in range(len(row))) + " |" for row in body
        ]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:{'>' if i in (1, 2) else '<'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in body]
    )


def main(argv: list[str] | None = None) -> int:
    """Print the registry; returns the exit status (2 when no model matches)."""
    parser = argparse.ArgumentParser(prog="lambdanet models", description=__doc__.split("\n")[0])
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'lambda_*' (default: all)")
    parser.add_argument("--format", choices=("table", "markdown", "json", "csv"), default="table")
    args = parser.parse_args(argv)
    rows = model_rows(args.pattern)
    if not rows:
        import lambdanet

        print(f"no model matches pattern={args.pattern!r}; {len(lambdanet.list_models())} models are registered")
        return 2
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        print(_table(rows, markdown=args.format == "markdown"))
    return 0
