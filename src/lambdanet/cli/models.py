"""lambdanet models [--format table|markdown|json|csv] [pattern]: the model registry with parameters and MACs.

Counts are those of lambdanet.model_stats at each model's native input size, in the paper's convention (Bello,
"LambdaNetworks", ICLR 2021, arXiv:2102.08602, App. E.2): GMACs are multiply-accumulates; the paper's "FLOPS" are
twice that. They are static, so they are read from a table shipped with the package (models/zoo_stats.json); a
model missing from it (one you registered yourself) is counted on the meta device when listed. --recompute counts
every listed model afresh; developers regenerate the shipped table with --write-cache after changing a model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["CACHE", "compute_stats", "main", "model_rows"]

FIELDS = ("name", "params_m", "gmacs", "input_size", "fixed_input_size", "source")
CACHE = Path(__file__).resolve().parent.parent / "models" / "zoo_stats.json"


@cache
def _cached() -> dict[str, dict[str, Any]]:
    return json.loads(CACHE.read_text()) if CACHE.is_file() else {}


def compute_stats(name: str) -> dict[str, Any]:
    """Parameters, MACs, input size and fixed-size flag of a registered model at its native input size (meta
    device: nothing is computed)."""
    import lambdanet

    info = lambdanet.model_info(name)
    with torch.device("meta"):
        model = lambdanet.create_model(name)
    stats = lambdanet.model_stats(model, info.input_size)
    return {
        "params": stats.params,
        "macs": stats.macs,
        "input_size": list(info.input_size),
        "fixed_input_size": bool(getattr(model, "fixed_input_size", info.fixed_input_size)),
    }


def model_rows(pattern: str = "*", *, recompute: bool = False) -> Iterator[dict[str, Any]]:
    """One row per registered model matching ``pattern``, as soon as it is ready: name, params (M), GMACs, input
    size, fixed input size, source."""
    import lambdanet

    for name in lambdanet.list_models(pattern):
        cached = None if recompute else _cached().get(name)
        figures = cached or compute_stats(name)
        yield {
            "name": name,
            "params_m": round(figures["params"] / 1e6, 3),
            "gmacs": round(figures["macs"] / 1e9, 3),
            "input_size": "x".join(str(s) for s in figures["input_size"]),
            "fixed_input_size": figures["fixed_input_size"],
            "source": lambdanet.model_info(name).paper_ref,
        }


def write_cache(path: Path = CACHE) -> int:
    """Recount every registered image model and write the shipped table; returns the number of models."""
    import lambdanet

    table = {}
    for name in lambdanet.list_models():
        if lambdanet.model_info(name).extra.get("task") == "language_model":
            continue  # tiny, counted when listed; they change with the sequence work, not the zoo
        table[name] = compute_stats(name)
        print(f"{name}: {table[name]['params']} params, {table[name]['macs']} MACs", flush=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    _cached.cache_clear()
    return len(table)


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        r["name"],
        f"{r['params_m']:.3f}",
        f"{r['gmacs']:.3f}",
        r["input_size"],
        "yes" if r["fixed_input_size"] else "no",
        r["source"],
    ]


HEADERS = ["name", "params (M)", "GMACs", "input", "fixed size", "source"]


def _print_rows(rows: Iterator[dict[str, Any]], fmt: str, names: list[str]) -> None:
    if fmt == "json":
        print(json.dumps(list(rows), indent=1))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        print(buf.getvalue(), end="", flush=True)
        for r in rows:
            buf = io.StringIO()
            csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n").writerow(r)
            print(buf.getvalue(), end="", flush=True)
        return
    if fmt == "markdown":
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "|".join(["---", "---:", "---:", "---", "---", "---"]) + "|", flush=True)
        for r in rows:
            cells = _cells(r)
            print("| " + " | ".join([f"`{cells[0]}`", *cells[1:]]) + " |", flush=True)
        return
    # Fixed column widths (the longest name is known up front), so every row prints as soon as it is ready.
    widths = [max(len(HEADERS[0]), *map(len, names)), 10, 8, 11, 10, 0]
    fmt_row = "  ".join(f"{{:{'>' if i in (1, 2) else '<'}{w}}}" for i, w in enumerate(widths))
    print(fmt_row.format(*HEADERS).rstrip())
    print(fmt_row.format(*("-" * (w or 6) for w in widths)).rstrip(), flush=True)
    for r in rows:
        print(fmt_row.format(*_cells(r)).rstrip(), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Print the registry; returns the exit status (2 when no model matches)."""
    import lambdanet

    parser = argparse.ArgumentParser(
        prog="lambdanet models",
        description=__doc__.split("\n", 1)[1].strip().replace("``", "`"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern of model names, e.g. 'lambda_*'")
    parser.add_argument("--format", choices=("table", "markdown", "json", "csv"), default="table", help="output format")
    parser.add_argument(
        "--recompute", action="store_true", help="count every listed model instead of reading the table"
    )
    parser.add_argument(
        "--write-cache", action="store_true", help="(developers) recount every model and rewrite the shipped table"
    )
    args = parser.parse_args(argv)
    if args.write_cache:
        print(f"wrote {write_cache()} models to {CACHE}")
        return 0
    names = lambdanet.list_models(args.pattern)
    if not names:
        print(
            f"lambdanet models: no model matches pattern={args.pattern!r}; {len(lambdanet.list_models())} models are "
            "registered (lambdanet models lists them)",
            file=sys.stderr,
        )
        return 2
    try:
        _print_rows(model_rows(args.pattern, recompute=args.recompute), args.format, names)
    except (ImportError, ValueError) as e:  # a model that cannot be built here (e.g. a missing 3-D layer)
        print(f"\nlambdanet models: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
