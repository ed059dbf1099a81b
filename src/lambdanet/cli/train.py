"""``lambdanet train``: train a registered model from a YAML recipe with dotted overrides, on Lightning.

Examples::

    lambdanet train                                   # lambda_net_tiny on the bundled 8x8 digits
    lambdanet train -c cifar10_lambda_resnet18 --data.root ~/data --optim.lr 0.05
    lambdanet train --print-config
    lambdanet train --resume runs/digits_tiny-lambda_net_tiny-20250101-120000
"""

from __future__ import annotations

import sys
from pathlib import Path

from lambdanet._config import config_parser, fail, parse
from lambdanet.train import config
from lambdanet.train.config import DEFAULT_RECIPE

__all__ = ["main"]

PROG = "lambdanet train"
_FLAG = {"type": bool, "default": False}  # a bare --flag is true
_OPTIONS = [
    (("-c", "--config"), {"action": "append", "help": f"recipe name or YAML path (default {DEFAULT_RECIPE}); repeat"}),
    (("--print-config",), {**_FLAG, "help": "print the resolved, validated config as YAML and exit"}),
    (("--list-recipes",), {**_FLAG, "help": "list the shipped recipes and exit"}),
    (("--resume",), {"help": "continue a run: its directory or a checkpoint (last.ckpt)"}),
    (("--init-from",), {"help": "fine-tune from these weights (checkpoint or pretrained folder; new head if needed)"}),
]


def _recipe_table() -> str:
    """One line per shipped recipe: name, model, data, length and the first sentence of its leading comment."""
    rows = [("recipe", "model", "data", "length", "description")]
    for name in config.list_recipes():
        label, data = config.recipe_layer(name)
        text = Path(label.removeprefix("recipe ")).read_text()
        first = next((line for line in text.splitlines() if line.strip()), "")
        about = first.lstrip("# ").strip().split(". ")[0].rstrip(".") if first.startswith("#") else ""
        train = data.get("train") or {}
        steps = f" x {train['limit_train_batches']} steps" if isinstance(train.get("limit_train_batches"), int) else ""
        model, dataset = ((data.get(key) or {}).get("name", "?") for key in ("model", "data"))
        about = about if len(about) <= 90 else about[:87].rstrip() + "..."
        rows.append((name, str(model), str(dataset), f"{train.get('epochs', '?')} ep{steps}", about))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


def main(argv: list[str]) -> int:
    parser = config_parser(
        config.RunConfig,
        prog=PROG,
        description="Train a lambda network (default: lambda_net_tiny on the bundled 8x8 digits). Every key "
        "below can be set in a recipe (section: key) or as --section.key VALUE (VALUE is YAML).",
        usage=f"{PROG} [-c RECIPE] [--print-config] [--resume RUN] [--init-from CKPT] [--section.key VALUE ...]",
        extra=_OPTIONS,
    )
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    try:
        args = parse(parser, [], argv)  # for the options that are not config keys
        if args.list_recipes:
            print(_recipe_table())
            return 0
        if args.resume and not args.config:
            from lambdanet.checkpoint import load_checkpoint
            from lambdanet.train.run import resolve_resume

            ckpt_path, _ = resolve_resume(args.resume)
            layers = [load_checkpoint(ckpt_path)["lambdanet"]["config"]]
        else:
            layers = [config.recipe_layer(name) for name in args.config or [DEFAULT_RECIPE]]
        cfg = config.resolve(layers, argv, parser=parser)
        if args.init_from:
            cfg.train.init_from = args.init_from
        if args.resume:
            cfg.train.init_from = None  # the resumed checkpoint holds the weights
        if args.print_config:
            print(config.to_yaml(cfg), end="")
            return 0
        config.check_hardware(cfg)
    except (ValueError, FileNotFoundError) as e:
        return fail(PROG, e)

    from lambdanet.train.callbacks import NonFiniteLossError
    from lambdanet.train.run import fit

    try:
        fit(cfg, argv=argv, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:
        return fail(PROG, e)
    except (NonFiniteLossError, OSError) as e:  # a write failure (disk full, permissions): not a mistake in the command
        print(f"{PROG}: error: {e}", file=sys.stderr)
        print(f"{PROG}: the last good checkpoint is kept in the run's checkpoints/ folder", file=sys.stderr)
        return 1
    return 0
