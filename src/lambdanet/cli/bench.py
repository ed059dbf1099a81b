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
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from lambdanet._config import ConfigError, config_parser, parse, read_yaml_mapping

__all__ = ["CONTENDER_ALIASES", "MemoryOptions", "Output", "main"]

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
    threads: int | None = None
    quiet: bool = False


@dataclass
class MemoryOptions:
    """The memory model (Table 4).

    Attributes:
        batch: batch of the Table 4 model (paper: 128).
        check: check the model against measured memory at small sizes (``--no-check`` skips it).
        peak: also measure peak live bytes in the check.
    """

    batch: int = 128
    check: bool = True
    peak: bool = False


# Earlier option names of the benchmark dataclasses' fields.
_ALIASES = {"--peak": "--measure_peak", "--no-peak": "--measure_peak=false", "--no_peak": "--measure_peak=false"}


def _commands() -> dict[str, tuple[str, tuple[type, ...]]]:
    from lambdanet.bench.layer import LayerBenchConfig
    from lambdanet.bench.model import ModelBenchConfig

    return {
        "layer": ("one layer: lambda (each algorithm) vs attention, conv3x3, lambda-networks", (LayerBenchConfig,)),
        "model": ("models: training/inference images per second, memory, params, MACs", (ModelBenchConfig,)),
        "memory": ("the paper's Table 4 from the memory model, checked against measurement", (MemoryOptions,)),
    }


def _parser(command: str | None = None) -> ArgumentParser:
    """The parser of ``bench <command>``; without a command, the parser of ``bench`` with the three subcommands."""
    if command is None:
        top = ArgumentParser(
            prog="lambdanet bench", description=__doc__.split("\n\n")[0].replace("``", "`"), exit_on_error=False
        )
        sub = top.add_subcommands(dest="command")
        for name, (text, _) in _commands().items():
            sub.add_subcommand(name, _parser(name), help=text)
        return top
    text, groups = _commands()[command]
    return config_parser(
        *groups,
        Output,
        prog=f"lambdanet bench {command}",
        description=f"{text}. Options are the fields below (``--dim-k`` = ``--dim_k``; a boolean alone is true, "
        "``--no-X`` false; a list takes several words, ``--sides 8 16``).",
        usage=f"lambdanet bench {command} [--config FILE] [--KEY VALUE ...]",
    )


def _config_layer(path: str, command: str, keys: set[str]) -> dict[str, Any]:
    data = {str(k).replace("-", "_"): v for k, v in read_yaml_mapping(path, "--config").items()}
    wanted = data.pop("command", command)
    if wanted != command:
        raise ConfigError(f"--config {path} is for 'bench {wanted}', not '{command}'")
    unknown = sorted(set(data) - keys)
    if unknown:
        raise ConfigError(f"--config {path} has unknown options {unknown}; valid: {sorted(keys)}")
    return data


def _parse(command: str, argv: list[str]) -> tuple[Output, Any]:
    """The options of ``bench <command>``: the --config file, then the command line."""
    parser = _parser(command)
    keys = parser.lambdanet_keys  # type: ignore[attr-defined]
    argv = [_ALIASES.get(a, a) if "measure_peak" in keys else a for a in argv]
    first = parse(parser, [], argv)
    layers = (
        [(f"--config {first.config}", _config_layer(first.config, command, set(keys) - {"config"}))]
        if first.config
        else []
    )
    ns = parse(parser, layers, argv)
    values = {k: v for k, v in ns.items() if k in keys}
    output = Output(**{f.name: values.pop(f.name) for f in dataclasses.fields(Output)})
    if output.threads is not None and output.threads < 1:
        raise ConfigError(f"threads={output.threads} must be >= 1")
    output.out = output.out or f"bench-results/{command}"
    if command == "layer":  # short names of the contenders (conv -> lambda conv)
        from lambdanet.bench.layer import contender_names

        known = contender_names()
        values["contenders"] = [CONTENDER_ALIASES.get(a, a) for a in values["contenders"]]
        bad = [a for a in values["contenders"] if a not in known]
        if bad:
            short = [a for a, n in CONTENDER_ALIASES.items() if n in known]
            raise ConfigError(f"--contenders {bad[0]!r} is not available; expected some of {short}")
    (cls,) = _commands()[command][1]
    return output, cls(**values)


def _print(text: str) -> None:
    print(text, flush=True)


def _run_layer(output: Output, cfg: Any) -> int:
    from lambdanet.bench.layer import growth_exponent, run_layer_bench
    from lambdanet.bench.report import format_table, plot_sweep, write_csv, write_json

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")  # raised inside lambda-networks
        result = run_layer_bench(cfg, progress=not output.quiet)
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
    _print(format_table(rows, columns, markdown=output.markdown))
    growth = []
    for context in cfg.contexts:
        for name in cfg.contenders:
            row = {"context": context, "name": name}
            for key in ("fwd_bwd_ms", "saved_mib"):
                row[key] = growth_exponent(rows, name, context, key)
            row["sizes"] = sum(1 for r in rows if (r["name"], r["context"]) == (name, context) and "fwd_bwd_ms" in r)
            if row["fwd_bwd_ms"] is not None:
                growth.append(row)
    if growth:
        _print("\nGrowth exponent in n (log-log slope over the sweep; 1 = linear, 2 = quadratic):")
        _print(
            format_table(
                growth,
                [
                    ("context", "context"),
                    ("name", "implementation"),
                    ("fwd_bwd_ms", "time"),
                    ("saved_mib", "memory"),
                    ("sizes", "sizes"),
                ],
                markdown=output.markdown,
            )
        )
    if any(g["sizes"] < 3 for g in growth):
        _print("note: exponents fitted over 2 sizes are rough (a single noisy timing moves them); sweep more --sides")
    for note in result["notes"]:
        _print(f"note: {note}")
    result["growth"] = growth
    files = [write_json(Path(output.out) / "layer.json", result), write_csv(Path(output.out) / "layer.csv", rows)]
    if output.plot:
        for context in cfg.contexts:
            title = f"{context} context, b={cfg.batch}, d={cfg.dim}, {cfg.device} {cfg.dtype}"
            if context == "local":
                title += f", scope {cfg.scope}"
            metrics = [("fwd_bwd_ms", "forward + backward (ms)"), ("saved_mib", "saved for backward (MiB)")]
            if cfg.measure_peak:
                metrics.append(("peak_mib", "peak, CUDA allocator or live tensors (MiB)"))
            path = Path(output.out) / f"layer_{context}.png"
            files.append(plot_sweep(rows, path, metrics=metrics, context=context, title=title))
    _print("wrote " + ", ".join(str(f) for f in files if f is not None))
    return 0


def _run_model(output: Output, cfg: Any) -> int:
    from lambdanet.bench.model import run_model_bench
    from lambdanet.bench.report import format_table, write_csv, write_json

    result = run_model_bench(cfg, progress=not output.quiet)
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
    _print(format_table(result["rows"], columns, markdown=output.markdown))
    first = result["rows"][0] if result["rows"] else {}
    for key, label in (("infer_img_s", "inference"), ("train_img_s", "training"), ("paper_ex_s", "paper Table 13")):
        if first.get(key):
            ratios = ", ".join(f"{r['model']} {first[key] / r[key]:.2f}x" for r in result["rows"][1:] if r.get(key))
            if ratios:
                _print(f"{label} slowdown against {first['model']}: {ratios}")
    for note in result["notes"]:
        _print(f"note: {note}")
    out = Path(str(output.out))
    files = [write_json(out / "model.json", result), write_csv(out / "model.csv", result["rows"])]
    _print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _run_memory(output: Output, args: MemoryOptions) -> int:
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
        raise ConfigError(f"batch={args.batch} must be >= 1")
    table4 = paper_table4(batch=args.batch)
    rows4 = []
    for name, gib in table4.items():
        paper = PAPER_TABLE4_GB[name]
        rows4.append({"layer": name, "paper GB": paper, "model GiB": gib, "model / paper": gib / paper})
    _print(f"Table 4 (ResNet-50, 224 px, batch {args.batch}, float32): position-interaction tensors only")
    _print(format_table(rows4, [(k, k) for k in rows4[0]], markdown=output.markdown))

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
    _print(format_table(ours, [(k, k) for k in ours[0]], markdown=output.markdown))

    d2 = [{"App. D.2 (LambdaResNet-420 c4, 20x20, b=32, bf16)": k, "MiB": v} for k, v in paper_appendix_d2().items()]
    _print("\npaper: lambda layers 38.4 MB (4.8 MB shared), attention layers 0.625 GB")
    _print(format_table(d2, [(k, k) for k in d2[0]], markdown=output.markdown))

    result: dict[str, Any] = {"table4": rows4, "resnet50": ours, "appendix_d2": d2, "batch": args.batch}
    files = []
    if args.check:
        check = check_model(measure_peak=args.peak)
        cols = [("shape", "shape"), ("scope", "scope"), ("kind", "layer"), ("model_mib", "model MiB")]
        cols += [("saved_mib", "saved MiB"), ("ratio", "saved / model")]
        cols += [("peak_mib", "peak MiB")] if args.peak else []
        cols += [("dominant term", "dominant term")]
        _print("\nModel against measurement (memory saved for backward, one layer):")
        _print(format_table(check, cols, markdown=output.markdown))
        worst = max(check, key=lambda r: abs(float(r["ratio"]) - 1))  # type: ignore[arg-type]
        _print(f"largest deviation: {worst['kind']} at {worst['shape']}: measured / model = {worst['ratio']:.2f}")
        result["check"] = check
        files.append(write_csv(Path(output.out) / "memory_check.csv", check))
    files += [write_json(Path(output.out) / "memory.json", result), write_csv(Path(output.out) / "table4.csv", rows4)]
    if output.plot:
        curve = []
        for kind in (k for k in CONTENDERS if k != "lambda blocked"):  # blocked is a local-scope algorithm
            for side in (7, 14, 28, 56, 112):
                shape = LayerShape(128, 256, side, 8 if kind.startswith("attention") else 4, scope=None)
                curve.append({"context": "global", "name": kind, "n": side * side, "model_mib": None})
                curve[-1]["model_mib"] = total_mib(layer_saved_bytes(kind, shape))
        files.append(
            plot_sweep(
                curve,
                Path(output.out) / "memory_model.png",
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
    """Entry point of ``lambdanet bench``; returns the exit status (2 with a one-line message for bad options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command not in commands:
        raise _Exit(f"lambdanet bench: unknown command {command!r}; expected one of {list(commands)}")
    if any(a in ("-h", "--help") for a in rest):
        _parser(command).print_help()
        return 0
    try:
        output, cfg = _parse(command, rest)
    except ValueError as err:  # ConfigError, or a benchmark dataclass refusing a value
        raise _Exit(f"lambdanet bench {command}: {' '.join(str(err).split())}") from err
    if output.threads is not None:
        torch.set_num_threads(output.threads)
    torch.manual_seed(0)
    try:
        return {"layer": _run_layer, "model": _run_model, "memory": _run_memory}[command](output, cfg)
    except ValueError as err:
        print(f"lambdanet bench {command}: error: {err}", file=sys.stderr)
        return 2


class _Exit(SystemExit):
    """A one-line usage error: printed on stderr, exit status 2 (``SystemExit`` so that callers see the message)."""

    def __init__(self, message: str) -> None:
        print(message.replace(": ", ": error: ", 1), file=sys.stderr)
        super().__init__(message)
        self.code = 2


if __name__ == "__main__":
    sys.exit(main())
