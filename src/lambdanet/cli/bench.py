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

import dataclasses
import functools
import itertools
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from jsonargparse import ArgumentParser

from lambdanet._config import ConfigError, check_domains, config_parser, fail, parse, read_yaml_mapping
from lambdanet.bench import memory as bm
from lambdanet.bench.layer import LayerBenchConfig, check_model, growth_exponent, run_layer_bench
from lambdanet.bench.model import ModelBenchConfig, run_model_bench
from lambdanet.bench.report import format_table, plot_sweep, write_csv, write_json
from lambdanet.layers.algorithms import ALGORITHMS

__all__ = ["CONTENDER_ALIASES", "MemoryOptions", "Output", "main"]

CONTENDER_ALIASES = {  # short names of the contenders: conv -> lambda conv
    **{name: f"lambda {name}" for name in ALGORITHMS},
    "attention": "attention (materialised)",
    "sdpa": "attention (sdpa)",
    "conv3x3": "conv3x3",
    "lucid": "lambda-networks",
}


@dataclass
class Output:
    """Output of every benchmark.

    Attributes:
        config: YAML file of option values (keys are option names, ``-`` or ``_``; ``command`` names the benchmark);
            options on the command line win.
        out: folder for JSON, CSV and plots (default ``bench-results/<command>``).
        plot: write the matplotlib plots (``--no-plot`` skips them).
        markdown: print markdown tables.
        threads: torch intra-op threads (default: torch's).
        quiet: no progress lines on stderr.
    """

    config: str | None = None
    out: str | None = None
    plot: bool = True
    markdown: bool = False
    threads: Annotated[int | None, "must be >= 1"] = None
    quiet: bool = False


@dataclass
class MemoryOptions:
    """The memory model (Table 4).

    Attributes:
        batch: batch of the Table 4 model (paper: 128).
        check: check the model against measured memory at small sizes (``--no-check`` skips it).
        measure_peak: also measure peak live bytes in the check.
    """

    batch: Annotated[int, "must be >= 1"] = 128
    check: bool = True
    measure_peak: bool = False


_ALIASES = {"--peak": "--measure_peak", "--no-peak": "--measure_peak=false", "--no_peak": "--measure_peak=false"}
_COMMANDS = {
    "layer": (LayerBenchConfig, "one layer: lambda (each algorithm) vs attention, conv3x3, lambda-networks"),
    "model": (ModelBenchConfig, "models: training/inference images per second, memory, params, MACs"),
    "memory": (MemoryOptions, "the paper's Table 4 from the memory model, checked against measurement"),
}
_print = functools.partial(print, flush=True)


def _parser(command: str) -> tuple[type, ArgumentParser]:
    cls, text = _COMMANDS[command]
    return cls, config_parser(
        cls,
        Output,
        prog=f"lambdanet bench {command}",
        description=f"{text}. Options are the fields below (``--dim-k`` = ``--dim_k``; a boolean alone "
        "is true, ``--no-X`` false; a list takes several words, ``--sides 8 16``).",
        usage=f"lambdanet bench {command} [--config FILE] [--KEY VALUE ...]",
    )


def _parse(command: str, argv: list[str]) -> tuple[Output, Any]:
    """The options of ``bench <command>``: the --config file, then the command line."""
    cls, parser = _parser(command)
    argv = [_ALIASES.get(a, a) for a in argv]
    path = parse(parser, [], argv).config
    layers = []
    if path:
        data = {str(k).replace("-", "_"): v for k, v in read_yaml_mapping(path, "--config").items()}
        if data.setdefault("command", command) != command:
            raise ConfigError(f"--config {path} has command={data['command']!r}; expected {command!r}")
        layers.append((f"--config {path}", {k: v for k, v in data.items() if k != "command"}))
    values = dict(parse(parser, layers, argv).items())
    output = Output(**{f.name: values.pop(f.name) for f in dataclasses.fields(Output)})
    output.out = output.out or f"bench-results/{command}"
    if command == "layer":  # LayerBenchConfig refuses a name that is neither a contender nor a short name of one
        values["contenders"] = [CONTENDER_ALIASES.get(a, a) for a in values["contenders"]]
    cfg = cls(**values)
    check_domains(output)
    check_domains(cfg)
    return output, cfg


def _table(output: Output, rows: list[dict[str, Any]], keys: Any = None, heads: Any = None) -> None:
    keys = keys or list(rows[0])
    _print(format_table(rows, list(zip(keys, heads or keys)), markdown=output.markdown))


Report = tuple[dict[str, Any], dict[str, list[dict[str, Any]]], list[Any]]  # result, CSV name -> rows, plot files


def _run_layer(output: Output, cfg: Any) -> Report:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")  # raised inside lambda-networks
        result = run_layer_bench(cfg, progress=not output.quiet)
    rows = result["rows"]
    keys = ("context", "name", "side", "fwd_ms", "fwd_bwd_ms", "saved_mib", "peak_mib", "model_mib")
    heads = ("context", "implementation", "S", "fwd ms", "fwd+bwd ms", "saved MiB", "peak MiB", "model MiB")
    _table(output, rows, keys, heads)
    growth = []
    for context, name in itertools.product(cfg.contexts, cfg.contenders):
        row = {"context": context, "name": name}
        row.update({key: growth_exponent(rows, name, context, key) for key in ("fwd_bwd_ms", "saved_mib")})
        row["sizes"] = sum(1 for r in rows if (r["name"], r["context"]) == (name, context) and "fwd_bwd_ms" in r)
        growth += [row] if row["fwd_bwd_ms"] is not None else []
    if growth:
        _print("\nGrowth exponent in n (log-log slope over the sweep; 1 = linear, 2 = quadratic):")
        keys = ("context", "name", "fwd_bwd_ms", "saved_mib", "sizes")
        _table(output, growth, keys, ("context", "implementation", "time", "memory", "sizes"))
    if any(g["sizes"] < 3 for g in growth):
        _print("note: exponents fitted over 2 sizes are rough (a single noisy timing moves them); sweep more --sides")
    result["growth"] = growth
    plots = []
    for context in cfg.contexts if output.plot else ():
        title = f"{context} context, b={cfg.batch}, d={cfg.dim}, {cfg.device} {cfg.dtype}"
        title += f", scope {cfg.scope}" if context == "local" else ""
        metrics = [("fwd_bwd_ms", "forward + backward (ms)"), ("saved_mib", "saved for backward (MiB)")]
        metrics += [("peak_mib", "peak, CUDA allocator or live tensors (MiB)")] if cfg.measure_peak else []
        path = Path(output.out) / f"layer_{context}.png"
        plots.append(plot_sweep(rows, path, metrics=metrics, context=context, title=title))
    return result, {"layer": rows}, plots


def _run_model(output: Output, cfg: Any) -> Report:
    result = run_model_bench(cfg, progress=not output.quiet)
    rows = result["rows"]
    keys = ("model", "input", "params_m", "gmacs", "infer_img_s", "train_img_s", "saved_mib", "peak_mib", "paper_ex_s")
    heads = ("params (M)", "GMACs", "infer img/s", "train img/s", "saved MiB", "peak MiB", "paper ex/s")
    _table(output, rows, keys, ("model", "input", *heads))
    for key, label in (("infer_img_s", "inference"), ("train_img_s", "training"), ("paper_ex_s", "paper Table 13")):
        ratios = ", ".join(
            f"{r['model']} {rows[0][key] / r[key]:.2f}x" for r in rows[1:] if rows[0].get(key) and r.get(key)
        )
        if ratios:
            _print(f"{label} slowdown against {rows[0]['model']}: {ratios}")
    return result, {"model": rows}, []


def _run_memory(output: Output, args: MemoryOptions) -> Report:
    rows4 = []
    for name, gib in bm.paper_table4(batch=args.batch).items():
        paper = bm.PAPER_TABLE4_GB[name]
        rows4.append({"layer": name, "paper GB": paper, "model GiB": gib, "model / paper": gib / paper})
    _print(f"Table 4 (ResNet-50, 224 px, batch {args.batch}, float32): position-interaction tensors only")
    _table(output, rows4)
    ours, gib = [], functools.partial(bm.resnet50_model_gib, batch=args.batch)
    for kind in bm.CONTENDERS:
        heads = 8 if kind.startswith("attention") else 4  # the paper's h = 8 for attention
        local = None if kind.startswith("attention") else gib(kind)
        glob = None if kind == "conv3x3" else gib(kind, scope=None, heads=heads)
        ours.append({"layer": kind, "heads": None if kind == "conv3x3" else heads, "local 23x23 GiB": local})
        ours[-1]["global GiB"] = glob
    auto = {"layer": "lambda, auto rule", "heads": 4, "local 23x23 GiB": gib("lambda auto")}
    ours.insert(5, {**auto, "global GiB": gib("lambda auto", scope=None)})
    _print(
        f"\nModelled memory saved for backward by the 16 replaced layers of ResNet-50 (batch {args.batch}, "
        "float32, whole layers):"
    )
    _table(output, ours)
    d2 = [{"App. D.2 (LambdaResNet-420 c4, 20x20, b=32, bf16)": k, "MiB": v} for k, v in bm.paper_appendix_d2().items()]
    _print("\npaper: lambda layers 38.4 MB (4.8 MB shared), attention layers 0.625 GB")
    _table(output, d2)
    result: dict[str, Any] = {"table4": rows4, "resnet50": ours, "appendix_d2": d2, "batch": args.batch}
    csvs = {"table4": rows4}
    if args.check:
        peak = args.measure_peak
        check = check_model(measure_peak=peak)
        keys = ("shape", "scope", "kind", "model_mib", "saved_mib", "ratio", *(("peak_mib",) if peak else ()))
        heads = ("layer", "model MiB", "saved MiB", "saved / model", *(("peak MiB",) if peak else ()))
        _print("\nModel against measurement (memory saved for backward, one layer):")
        _table(output, check, (*keys, "dominant term"), ("shape", "scope", *heads, "dominant term"))
        worst = max(check, key=lambda r: abs(float(r["ratio"]) - 1))  # type: ignore[arg-type]
        _print(f"largest deviation: {worst['kind']} at {worst['shape']}: measured / model = {worst['ratio']:.2f}")
        result["check"] = csvs["memory_check"] = check
    plots = []
    if output.plot:
        curve = []
        global_kinds = [k for k in bm.CONTENDERS if k != "lambda blocked"]  # blocked is a local-scope algorithm
        for kind, side in itertools.product(global_kinds, (7, 14, 28, 56, 112)):
            shape = bm.LayerShape(128, 256, side, 8 if kind.startswith("attention") else 4, scope=None)
            mib = bm.total_mib(bm.layer_saved_bytes(kind, shape))
            curve.append({"context": "global", "name": kind, "n": side * side, "model_mib": mib})
        metrics = (("model_mib", "modelled saved MiB (one layer)"),)
        title = "memory model: b=128, d=256, global context"
        plots.append(plot_sweep(curve, Path(output.out) / "memory_model.png", metrics=metrics, title=title))
    return result, csvs, plots


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lambdanet bench``; returns the exit status (2 with a one-line message for bad options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _print(f"usage: lambdanet bench {{layer,model,memory}} [--help] [--KEY VALUE ...]\n\n{__doc__.strip()}")
        return 0
    command, prog = argv[0], f"lambdanet bench {argv[0]}"
    if command not in _COMMANDS:
        return fail("lambdanet bench", f"unknown command {command!r}; expected one of {list(_COMMANDS)}")
    if "-h" in argv or "--help" in argv:
        _parser(command)[1].print_help()
        return 0
    try:
        output, cfg = _parse(command, argv[1:])  # ConfigError, or a benchmark dataclass refusing a value
        if output.threads is not None:
            torch.set_num_threads(output.threads)
        torch.manual_seed(0)
        result, csvs, plots = {"layer": _run_layer, "model": _run_model, "memory": _run_memory}[command](output, cfg)
    except ValueError as err:
        return fail(prog, err)
    for note in result.get("notes", ()):
        _print(f"note: {note}")
    files = [write_json(Path(output.out) / f"{command}.json", result)]
    files += [write_csv(Path(output.out) / f"{name}.csv", rows) for name, rows in csvs.items()]
    _print("wrote " + ", ".join(str(f) for f in [*files, *plots] if f is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
