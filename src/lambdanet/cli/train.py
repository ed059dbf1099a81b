"""``lambdanet train``: train a registered model from a YAML recipe with dotted overrides, on Lightning.

Examples::

    lambdanet train                                   # lambda_net_tiny on the bundled 8x8 digits
    lambdanet train -c cifar10_lambda_resnet18 --data.root ~/data --optim.lr 0.05
    lambdanet train --print-config
    lambdanet train --resume runs/digits_tiny-lambda_net_tiny-20250101-120000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lambdanet._config import config_parser, fail
from lambdanet.train.config import (
    DEFAULT_RECIPE,
    RunConfig,
    check_hardware,
    config_from_dict,
    list_recipes,
    recipe_layer,
    resolve,
    to_dict,
    to_yaml,
)

__all__ = ["main"]

PROG = "lambdanet train"
_OPTIONS = [
    (("-c", "--config"), {"default": DEFAULT_RECIPE, "help": "recipe name (--list-recipes) or YAML path; repeatable"}),
    (("--print-config",), {"action": "store_true", "help": "print the resolved, validated config as YAML and exit"}),
    (("--list-recipes",), {"action": "store_true", "help": "list the shipped recipes and exit"}),
    (("--resume",), {"help": "continue a run: its directory or a checkpoint (last.ckpt)"}),
    (
        ("--init-from",),
        {"help": "fine-tune: start from these weights (checkpoint or pretrained directory; new head if needed)"},
    ),
]


def _options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The options that are not config keys; the rest of ``argv`` is ``--section.key value`` overrides."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("-h", "--help", action="store_true")
    for flags, kwargs in _OPTIONS:
        pre.add_argument(*flags, **({**kwargs, "action": "append", "default": None} if flags[0] == "-c" else kwargs))
    return pre.parse_known_args(argv)


def _first_sentence(text: str, limit: int = 90) -> str:
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _recipe_table() -> str:
    """One line per shipped recipe: name, model, data, length and the first line of its leading comment."""
    rows = [("recipe", "model", "data", "length", "description")]
    for name in list_recipes():
        label, data = recipe_layer(name)
        path = Path(label.removeprefix("recipe "))
        first = next((line for line in path.read_text().splitlines() if line.strip()), "")
        train = data.get("train") or {}
        steps = train.get("limit_train_batches")
        length = f"{train.get('epochs', '?')} ep" + (f" x {steps} steps" if isinstance(steps, int) else "")
        rows.append(
            (
                name,
                str((data.get("model") or {}).get("name", "?")),
                str((data.get("data") or {}).get("name", "?")),
                length,
                _first_sentence(first.lstrip("# ").strip()) if first.startswith("#") else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


def main(argv: list[str]) -> int:
    try:
        args, rest = _options(argv)
    except argparse.ArgumentError as e:
        return fail(PROG, e)
    parser = config_parser(
        RunConfig,
        prog=PROG,
        description="Train a lambda network (default: lambda_net_tiny on the bundled 8x8 digits). Every key "
        "below can be set in a recipe (section: key) or as --section.key VALUE (VALUE is YAML).",
        usage=f"{PROG} [-c RECIPE] [--print-config] [--resume RUN] [--init-from CKPT] [--section.key VALUE ...]",
        extra=_OPTIONS,
    )
    if args.help:
        parser.print_help()
        return 0
    if args.list_recipes:
        print(_recipe_table())
        return 0
    try:
        if args.resume and not args.config:
            from lambdanet.checkpoint import load_checkpoint
            from lambdanet.train.run import resolve_resume

            ckpt_path, _ = resolve_resume(args.resume)
            layers = [to_dict(config_from_dict(load_checkpoint(ckpt_path)["lambdanet"]["config"]))]
        else:
            layers = [recipe_layer(name) for name in args.config or [DEFAULT_RECIPE]]
        cfg = resolve(layers, rest, parser=parser)
        if args.init_from:
            cfg.train.init_from = args.init_from
        if args.resume:
            cfg.train.init_from = None  # the resumed checkpoint holds the weights
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        check_hardware(cfg)
    except (ValueError, FileNotFoundError) as e:
        return fail(PROG, e)

    from lambdanet.train.callbacks import NonFiniteLossError
    from lambdanet.train.run import fit

    try:
        fit(cfg, argv=argv, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        print(f"{PROG}: the last good checkpoint is kept in the run's checkpoints/ folder", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        return fail(PROG, e)
    except OSError as e:  # a write failure (disk full, file-size limit, permissions): not a mistake in the command
        print(f"{PROG}: error: {e}", file=sys.stderr)
        print(f"{PROG}: the last good checkpoint is kept in the run's checkpoints/ folder", file=sys.stderr)
        return 1
    return 0
