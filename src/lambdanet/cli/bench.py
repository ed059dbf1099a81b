"""``lambdanet bench layer|model|memory``: speed and memory benchmarks (Bello, "LambdaNetworks", ICLR 2021,
arXiv:2102.08602, Sec. 4.4, Tables 4 and 13).

- ``layer``: forward and forward+backward time, memory saved for backward and peak memory of lambda layers (every
  algorithm, global and local), self-attention (materialised maps and SDPA), a 3x3 convolution and
  ``lambda-networks`` over a sweep of map sizes.
- ``model``: training and inference images per second and memory of registered models, with parameters and MACs.
- ``memory``: the paper's Table 4 recomputed from the memory model, the model applied to ResNet-50 at batch 128,
  and the model checked against measured memory at small sizes.

Every command prints a table and writes JSON, CSV and (unless ``--no-plot``) PNG plots under ``--out``.
Defaults can come from a YAML file (``--config configs/bench/layer_cpu.yaml``) whose keys are option names.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CONTENDER_ALIASES", "main"]

CONTENDER_ALIASES = {
    "einsum": "lambda einsum",
    "logits": "lambda logits",
    "blocked": "lambda blocked",
    "conv": "lambda conv",
    "fft": "lambda fft",
    "attention": "attention (materialised)",
    "sdpa": "attention (sdpa)",
    "conv3x3": "conv3x3",
    "lucid": "lambda-networks",
}


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--config", type=Path, help="YAML file of option defaults (keys = option names, '-' or '_')")
    p.add_argument("--out", type=Path, default=Path(out), help=f"folder for JSON, CSV and plots (default {out})")
    p.add_argument("--no-plot", action="store_true", help="skip the matplotlib plots")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16 = autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile every module")
    p.add_argument("--reps", type=int, help="timed repetitions (median)")
    p.add_argument("--warmup", type=int, help="untimed warm-up calls")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambdanet bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    layer = sub.add_parser("layer", help="one layer: lambda (each algorithm) vs attention, conv3x3, lambda-networks")
    _common(layer, "bench-results/layer")
    _device_options(layer)
    layer.add_argument("--sides", type=int, nargs="+", default=[8, 16, 32], help="map sides S (n = S^2)")
    layer.add_argument("--batch", type=int, default=2)
    layer.add_argument("--dim", type=int, default=64)
    layer.add_argument("--heads", type=int, default=4)
    layer.add_argument("--dim-k", type=int, default=16)
    layer.add_argument("--scope", type=int, default=7, help="local scope of the 'local' context")
    layer.add_argument("--contexts", nargs="+", choices=("global", "local", "3d"), default=["global", "local"])
    layer.add_argument(
        "--contenders", nargs="+", metavar="NAME", help=f"subset of {', '.join(CONTENDER_ALIASES)} (default all)"
    )
    layer.add_argument("--memory-budget-mib", type=float, default=2048.0, help="skip cases modelled above this")
    layer.add_argument("--max-call-s", type=float, default=5.0, help="skip cases whose first call is slower")
    layer.add_argument("--budget-s", type=float, default=10.0, help="timing budget per measurement")
    layer.add_argument("--no-peak", action="store_true", help="skip the (slow on CPU) peak-memory measurement")

    model = sub.add_parser("model", help="models: training/inference images per second, memory, params, MACs")
    _common(model, "bench-results/model")
    _device_options(model)
    model.add_argument(
        "--models", nargs="+", help="registry names with optional overrides, e.g. lambda_resnet50:placement=CCLL"
    )
    model.add_argument("--batch", type=int, default=8)
    model.add_argument("--image-size", type=int, help="square input side (default: each model's own)")
    model.add_argument("--no-train", action="store_true", help="inference only")
    model.add_argument("--no-infer", action="store_true", help="training only")
    model.add_argument("--budget-s", type=float, default=30.0, help="timing budget per measurement")
    model.add_argument("--peak", action="store_true", help="also measure peak live bytes of a training step (CPU)")

    memory = sub.add_parser("memory", help="the paper's Table 4 from the memory model, checked against measurement")
    _common(memory, "bench-results/memory")
    memory.add_argument("--batch", type=int, default=128, help="batch of the Table 4 model (paper: 128)")
    memory.add_argument("--no-check", action="store_true", help="skip the measurement at small sizes")
    memory.add_argument("--peak", action="store_true", help="also measure peak live bytes in the check")
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    import yaml

    if not args.config.is_file():
        raise SystemExit(f"lambdanet bench: --config {args.config} is not a file")
    data = yaml.safe_load(args.config.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"lambdanet bench: --config {args.config} must hold a mapping of option names to values")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    known = {a.dest for a in sub._actions}
    command = data.pop("command", args.command)
    if command != args.command:
        raise SystemExit(f"lambdanet bench: --config {args.config} is for 'bench {command}', not '{args.command}'")
    defaults = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise SystemExit(f"lambdanet bench: --config {args.config} has unknown options {unknown}")
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)  # command-line options still win


def _timing_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("reps", "warmup") if getattr(args, k) is not None}


def _print(text: str) -> None:
    print(text, flush=True)


def _run_layer(args: argparse.Namespace) -> int:
    from lambdanet.bench.layer import LayerBenchConfig, contender_names, growth_exponent, run_layer_bench
    from lambdanet.bench.report import format_table, plot_sweep, write_csv, write_json

    names = list(contender_names())
    if args.contenders:
        picked = []
        for alias in args.contenders:
            name = CONTENDER_ALIASES.get(alias, alias)
            if name not in names:
                raise SystemExit(
                    f"lambdanet bench layer: --contenders {alias!r} is not available; expected some of "
                    f"{[a for a, n in CONTENDER_ALIASES.items() if n in names]}"
                )
            picked.append(name)
        names = picked
    cfg = LayerBenchConfig(
        sides=args.sides,
        batch=args.batch,
        dim=args.dim,
        heads=args.heads,
        dim_k=args.dim_k,
        scope=args.scope,
        contexts=args.contexts,
        contenders=names,
        budget_s=args.budget_s,
        memory_budget_mib=args.memory_budget_mib,
        max_call_s=args.max_call_s,
        device=args.device,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile=args.compile,
        measure_peak=not args.no_peak,
        **_timing_kwargs(args),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")  # raised inside lambda-networks
        result = run_layer_bench(cfg, progress=not args.quiet)
    rows = result["rows"]
    columns = [
        ("context", "context"),
        ("name", "implementation"),
        ("side", "S"),
        ("fwd_ms", "fwd ms"),
        ("fwd_bwd_ms", "fwd+bwd ms"),
        ("saved_mib", "saved MiB"),
        ("peak_mib", "peak MiB"),
        ("model_mib", "model MiB"),
    ]
    _print(format_table(rows, columns, markdown=args.markdown))
    growth = []
    for context in cfg.contexts:
        for name in cfg.contenders:
            row = {"context": context, "name": name}
            for key in ("fwd_bwd_ms", "saved_mib"):
                row[key] = growth_exponent(rows, name, context, key)
            if row["fwd_bwd_ms"] is not None:
                growth.append(row)
    if growth:
        _print("\nGrowth exponent in n (log-log slope over the sweep; 1 = linear, 2 = quadratic):")
        _print(
            format_table(
                growth,
                [("context", "context"), ("name", "implementation"), ("fwd_bwd_ms", "time"), ("saved_mib", "memory")],
                markdown=args.markdown,
            )
        )
    for note in result["notes"]:
        _print(f"note: {note}")
    result["growth"] = growth
    files = [write_json(args.out / "layer.json", result), write_csv(args.out / "layer.csv", rows)]
    if not args.no_plot:
        for context in cfg.contexts:
            title = f"{context} context, b={cfg.batch}, d={cfg.dim}, {cfg.device} {cfg.dtype}"
            if context == "local":
                title += f", scope {cfg.scope}"
            metrics = [("fwd_bwd_ms", "forward + backward (ms)"), ("saved_mib", "saved for backward (MiB)")]
            if cfg.measure_peak:
                metrics.append(("peak_mib", "peak, CUDA allocator or live tensors (MiB)"))
            path = args.out / f"layer_{context}.png"
            files.append(plot_sweep(rows, path, metrics=metrics, context=context, title=title))
    _print("wrote " + ", ".join(str(f) for f in files if f is not None))
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from lambdanet.bench.model import DEFAULT_MODELS, ModelBenchConfig, run_model_bench
    from lambdanet.bench.report import format_table, write_csv, write_json

    cfg = ModelBenchConfig(
        models=tuple(args.models or DEFAULT_MODELS),
        batch=args.batch,
        image_size=args.image_size,
        train=not args.no_train,
        infer=not args.no_infer,
        budget_s=args.budget_s,
        device=args.device,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile=args.compile,
        measure_peak=args.peak,
        **_timing_kwargs(args),
    )
    result = run_model_bench(cfg, progress=not args.quiet)
    columns = [
        ("model", "model"),
        ("input", "input"),
        ("params_m", "params (M)"),
        ("gmacs", "GMACs"),
        ("infer_img_s", "infer img/s"),
        ("train_img_s", "train img/s"),
        ("saved_mib", "saved MiB"),
        ("peak_mib", "peak MiB"),
        ("paper_ex_s", "paper ex/s"),
    ]
    _print(format_table(result["rows"], columns, markdown=args.markdown))
    first = result["rows"][0] if result["rows"] else {}
    for key, label in (("infer_img_s", "inference"), ("train_img_s", "training"), ("paper_ex_s", "paper Table 13")):
        if first.get(key):
            ratios = ", ".join(f"{r['model']} {first[key] / r[key]:.2f}x" for r in result["rows"][1:] if r.get(key))
            if ratios:
                _print(f"{label} slowdown against {first['model']}: {ratios}")
    for note in result["notes"]:
        _print(f"note: {note}")
    files = [write_json(args.out / "model.json", result), write_csv(args.out / "model.csv", result["rows"])]
    _print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _run_memory(args: argparse.Namespace) -> int:
    from lambdanet.bench.layer import check_model
    from lambdanet.bench.memory import (
        CONTENDERS,
        PAPER_TABLE4_GB,
        LayerShape,
        layer_saved_bytes,
        paper_appendix_d2,
        paper_table4,
        resnet50_model_gib,
        total_mib,
    )
    from lambdanet.bench.report import format_table, plot_sweep, write_csv, write_json

    if args.batch < 1:
        raise SystemExit(f"lambdanet bench memory: --batch {args.batch} must be >= 1")
    table4 = paper_table4(batch=args.batch)
    rows4 = []
    for name, gib in table4.items():
        paper = PAPER_TABLE4_GB[name]
        rows4.append({"layer": name, "paper GB": paper, "model GiB": gib, "model / paper": gib / paper})
    _print(f"Table 4 (ResNet-50, 224 px, batch {args.batch}, float32): position-interaction tensors only")
    _print(format_table(rows4, [(k, k) for k in rows4[0]], markdown=args.markdown))

    ours = []
    for kind in CONTENDERS:
        heads = 8 if kind.startswith("attention") else 4  # the paper's h = 8 for attention
        local = None if kind.startswith("attention") else resnet50_model_gib(kind, batch=args.batch)
        glob = None if kind == "conv3x3" else resnet50_model_gib(kind, batch=args.batch, scope=None, heads=heads)
        ours.append({"layer": kind, "heads": None if kind == "conv3x3" else heads, "local 23x23 GiB": local})
        ours[-1]["global GiB"] = glob
    ours.insert(
        5,
        {
            "layer": "lambda, auto rule",
            "heads": 4,
            "local 23x23 GiB": _auto_gib(args.batch, 23),
            "global GiB": _auto_gib(args.batch, None),
        },
    )
    _print(
        f"\nModelled memory saved for backward by the 16 replaced layers of ResNet-50 (batch {args.batch}, "
        "float32, whole layers):"
    )
    _print(format_table(ours, [(k, k) for k in ours[0]], markdown=args.markdown))

    d2 = [{"App. D.2 (LambdaResNet-420 c4, 20x20, b=32, bf16)": k, "MiB": v} for k, v in paper_appendix_d2().items()]
    _print("\npaper: lambda layers 38.4 MB (4.8 MB shared), attention layers 0.625 GB")
    _print(format_table(d2, [(k, k) for k in d2[0]], markdown=args.markdown))

    result: dict[str, Any] = {"table4": rows4, "resnet50": ours, "appendix_d2": d2, "batch": args.batch}
    files = []
    if not args.no_check:
        check = check_model(measure_peak=args.peak)
        cols = [("shape", "shape"), ("scope", "scope"), ("kind", "layer"), ("model_mib", "model MiB")]
        cols += [("saved_mib", "saved MiB"), ("ratio", "saved / model")]
        cols += [("peak_mib", "peak MiB")] if args.peak else []
        cols += [("dominant term", "dominant term")]
        _print("\nModel against measurement (memory saved for backward, one layer):")
        _print(format_table(check, cols, markdown=args.markdown))
        worst = max(check, key=lambda r: abs(float(r["ratio"]) - 1))  # type: ignore[arg-type]
        _print(f"largest deviation: {worst['kind']} at {worst['shape']}: measured / model = {worst['ratio']:.2f}")
        result["check"] = check
        files.append(write_csv(args.out / "memory_check.csv", check))
    files += [write_json(args.out / "memory.json", result), write_csv(args.out / "table4.csv", rows4)]
    if not args.no_plot:
        curve = []
        for kind in (k for k in CONTENDERS if k != "lambda blocked"):  # blocked is a local-scope algorithm
            for side in (7, 14, 28, 56, 112):
                shape = LayerShape(128, 256, side, 8 if kind.startswith("attention") else 4, scope=None)
                curve.append({"context": "global", "name": kind, "n": side * side, "model_mib": None})
                curve[-1]["model_mib"] = total_mib(layer_saved_bytes(kind, shape))
        files.append(
            plot_sweep(
                curve,
                args.out / "memory_model.png",
                metrics=(("model_mib", "modelled saved MiB (one layer)"),),
                title="memory model: b=128, d=256, global context",
            )
        )
    _print("wrote " + ", ".join(str(f) for f in files if f is not None))
    return 0


def _auto_gib(batch: int, scope: int | None) -> float:
    """Modelled GiB of the ResNet-50 lambda layers with the algorithm the layer's rule picks for each shape."""
    from lambdanet.bench.memory import layer_saved_bytes, resnet50_layers
    from lambdanet.layers import choose_algorithm

    total = 0
    for s in resnet50_layers(batch=batch, scope=scope):
        kernel = (s.kernel_side, s.kernel_side) if scope is not None else (2 * s.side - 1,) * 2
        name = choose_algorithm(
            batch=batch,
            spatial=(s.side, s.side),
            kernel=kernel,
            dim_k=s.dim_k,
            dim_v=s.dim_v,
            dim_u=s.dim_u,
            heads=s.heads,
        )
        total += sum(layer_saved_bytes(f"lambda {name}", s).values())
    return total / 2**30


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lambdanet bench``; returns the exit status."""
    parser = _parser()
    args = _apply_config(parser, list(sys.argv[1:] if argv is None else argv))
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"lambdanet bench: --threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        run = {"layer": _run_layer, "model": _run_model, "memory": _run_memory}[args.command]
        return run(args)
    except ValueError as err:
        print(f"lambdanet bench {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
