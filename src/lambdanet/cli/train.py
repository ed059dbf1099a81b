"""``lambdanet train``: train a registered model from a YAML recipe with dotted overrides, on Lightning.

Examples::

    lambdanet train                                   # lambda_net_tiny on the bundled 8x8 digits
    lambdanet train -c cifar10_lambda_resnet18 --data.root ~/data --optim.lr 0.05
    lambdanet train --print-config
    lambdanet train --resume runs/digits_tiny-20250101-120000
"""

from __future__ import annotations

import argparse
import sys

from lambdanet.train.config import DEFAULT_RECIPE, config_from_dict, list_recipes, load_config, parse_overrides

__all__ = ["main"]

_EPILOG = """\
overrides: any config key as --section.key VALUE (VALUE is YAML), e.g.
  --optim.lr 0.05 --train.epochs 10 --data.batch_size 128 --model.overrides.scope 7
  --train.precision bf16-mixed --train.ema_decay 0.9999 --system.devices 2 --system.strategy ddp
sections: model, data, optim, sched, train, system (see --print-config for every key).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambdanet train",
        description="Train a lambda network (default: lambda_net_tiny on the bundled 8x8 digits).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("-c", "--config", default=None, help=f"recipe name or YAML path (default: {DEFAULT_RECIPE})")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--resume", default=None, help="continue a run: its directory or a checkpoint (last.ckpt)")
    return p


def main(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    try:
        overrides = parse_overrides(rest)
        if args.resume and not args.config:
            from lambdanet.train.checkpoint import load_checkpoint
            from lambdanet.train.config import apply_overrides
            from lambdanet.train.run import resolve_resume

            ckpt_path, _ = resolve_resume(args.resume)
            cfg = apply_overrides(config_from_dict(load_checkpoint(ckpt_path)["lambdanet"]["config"]), overrides)
        else:
            cfg = load_config(args.config, overrides)
    except ValueError as e:
        print(f"lambdanet train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from lambdanet.train.config import to_yaml

        print(to_yaml(cfg), end="")
        return 0

    from lambdanet.train.callbacks import NonFiniteLossError
    from lambdanet.train.run import fit

    try:
        fit(cfg, argv=argv, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"lambdanet train: error: {e}", file=sys.stderr)
        print("lambdanet train: the last good checkpoint is kept in the run's checkpoints/ folder", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"lambdanet train: error: {e}", file=sys.stderr)
        return 2
    return 0
