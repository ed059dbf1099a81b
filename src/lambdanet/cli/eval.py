"""``lambdanet eval``: top-1, top-5, loss and images per second of a training checkpoint on a dataset.

The model is rebuilt from the checkpoint (``create_model(model_name, **model_overrides)``); the dataset defaults
to the one the checkpoint was trained on and can be changed with ``--data.*`` overrides.

Examples::

    lambdanet eval runs/digits_tiny-20250101-120000/checkpoints/best.ckpt
    lambdanet eval best.ckpt --data.name cifar10 --data.root ~/data --split test --json result.json
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambdanet eval",
        description="Evaluate a lambdanet training checkpoint on a dataset split.",
        epilog="data overrides: --data.KEY VALUE (e.g. --data.name cifar10 --data.root ~/data)",
        allow_abbrev=False,
    )
    p.add_argument("checkpoint", help="a .ckpt written by lambdanet train (best.ckpt or last.ckpt)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate (test)")
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto", help="EMA or raw weights (auto)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's eval batch)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--num-workers", type=int, default=None, help="data-loader workers (default: the recipe's)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    from lambdanet.data.datasets import DataError
    from lambdanet.train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
    from lambdanet.train.config import apply_overrides, config_from_dict, parse_overrides

    try:
        overrides = parse_overrides(rest)
        bad = [k for k in overrides if k != "data"]
        if bad:
            raise ValueError(f"lambdanet eval takes only --data.* overrides, got --{bad[0]}")
        ckpt = load_checkpoint(args.checkpoint)
        meta = ckpt["lambdanet"]
        cfg = apply_overrides(config_from_dict(meta["config"]), overrides)
        model = model_from_checkpoint(ckpt, args.checkpoint, args.weights)
        from lambdanet.data.loader import build_splits, data_info, prepare

        info = data_info(cfg.data)
        trained = int(meta.get("num_classes", info.num_classes))
        if info.num_classes != trained:
            raise ValueError(
                f"checkpoint {args.checkpoint} was trained on {trained} classes but data.name={cfg.data.name!r} "
                f"has {info.num_classes}"
            )
        prepare(cfg.data)  # --data.download true fetches and verifies the CIFAR archive
        splits = build_splits(cfg.data, cfg.seed)
        dataset = getattr(splits, args.split)
        if dataset is None:
            raise ValueError(f"data.root={cfg.data.root} has no {args.split}/ split; use --split val")
    except (CheckpointError, DataError, ValueError) as e:
        print(f"lambdanet eval: error: {e}", file=sys.stderr)
        return 2

    import torch

    from lambdanet.train.evaluate import evaluate

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch_size or cfg.data.eval_batch_size or cfg.data.batch_size
    workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    result = evaluate(model, dataset, batch, device, workers, args.max_batches, args.channels_last)
    result.update(
        {
            "checkpoint": str(args.checkpoint),
            "model": meta.get("model_name"),
            "data": cfg.data.name,
            "split": args.split,
            "device": str(device),
        }
    )
    print(
        f"{meta.get('model_name')} on {cfg.data.name}/{args.split}: top-1 {result['top1']:.4f}  "
        f"top-5 {result['top5']:.4f}  loss {result['loss']:.4f}  {result['images']} images  "
        f"{result['images_per_second']:.1f} img/s ({device}, batch {batch})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0
