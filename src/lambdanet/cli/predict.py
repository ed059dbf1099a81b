"""``lambdanet predict``: top-k labels and probabilities for images, from a checkpoint or a pretrained directory.

The model, its evaluation transform and its class names come with the weights (see
:func:`lambdanet.load_for_inference`).

Examples::

    lambdanet predict runs/digits_tiny-lambda_net_tiny-20250101-120000/checkpoints/best.ckpt digit.png
    lambdanet predict my_model/ cat.jpg dog.jpg --topk 3 --json
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambdanet predict",
        description="Top-k labels for images from a lambdanet checkpoint, run directory or pretrained directory.",
        allow_abbrev=False,
    )
    p.add_argument(
        "weights_source",
        metavar="CHECKPOINT_OR_DIR",
        help="best.ckpt, a run directory, or a directory "
        "with config.json + model.safetensors (lambdanet.save_pretrained)",
    )
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--topk", type=int, default=None, help="labels per image (default: 5, or fewer classes)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto", help="EMA or raw weights (auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument(
        "--unsafe-load",
        action="store_true",
        help="read a checkpoint the safe loader refuses with the full unpickler; it can run any code in the file",
    )
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from lambdanet.inference import load_for_inference, predict

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size}; expected an integer >= 1")
        model, transform, classes = load_for_inference(
            args.weights_source, weights=args.weights, allow_pickle=args.unsafe_load, device=args.device
        )
        topk = min(5, len(classes)) if args.topk is None else args.topk
        if not 1 <= topk <= len(classes):
            raise ValueError(f"--topk {topk}; expected 1..{len(classes)} (the model's classes)")
        results = predict(model, transform, classes, args.images, topk=topk, batch_size=args.batch_size)
    except (ValueError, RuntimeError) as e:
        print(f"lambdanet predict: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(f"{r['path']}: " + ", ".join(f"{t['label']} {t['prob']:.4f}" for t in r["top"]))
    return 0
