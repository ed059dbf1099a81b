"""``lambdanet`` command line: ``lambdanet <command> [args]``.

Each command lives in its own module ``lambdanet.cli.<command>`` exposing ``main(argv) -> int``; modules are
imported lazily so that ``lambdanet --help`` stays fast and a command's heavy dependencies load only when used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "demo": ("lambdanet.cli.demo", "show a lambda layer at work: the algorithms agree; timing against a 3x3 conv"),
    "train": ("lambdanet.cli.train", "train a model from a recipe (default: embedded 8x8 digits)"),
    "eval": ("lambdanet.cli.eval", "evaluate a checkpoint on a dataset"),
    "predict": ("lambdanet.cli.predict", "top-k labels for images from a checkpoint or pretrained directory"),
    "generate": ("lambdanet.cli.generate", "sample text from a character language model checkpoint"),
    "models": ("lambdanet.cli.models", "list registered models with parameters and MACs"),
    "info": ("lambdanet.cli.info", "one model: overrides, default input, figures and source"),
    "bench": ("lambdanet.cli.bench", "speed and memory benchmarks"),
    "export": ("lambdanet.cli.export", "export a model to ONNX or torch.export"),
    "convert": ("lambdanet.cli.convert", "convert published checkpoints"),
}


def _usage() -> str:
    lines = ["usage: lambdanet <command> [args]", "", "commands:"]
    for name, (module, text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            lines.append(f"  {name:<8} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from lambdanet import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS or importlib.util.find_spec(COMMANDS[name][0]) is None:
        print(f"lambdanet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
