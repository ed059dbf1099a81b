"""``lambdanet eval``: top-1, top-5, loss and images per second of a training checkpoint on a dataset.

The model is rebuilt from the checkpoint (``create_model(model_name, **model_overrides)``); the dataset defaults
to the one the checkpoint was trained on and can be changed with ``--data.*`` overrides.

Examples::

    lambdanet eval runs/digits_tiny-lambda_net_tiny-20250101-120000/checkpoints/best.ckpt
    lambdanet eval best.ckpt --data.name cifar10 --data.root ~/data --split test --json result.json
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from lambdanet._config import command
from lambdanet.data.loader import DataConfig

__all__ = ["EvalOptions", "main"]

PROG = "lambdanet eval"


@dataclass
class EvalOptions:
    """Evaluation.

    Attributes:
        checkpoint: a ``.ckpt`` of ``lambdanet train`` (``best.ckpt``, ``last.ckpt``) or ``lambdanet convert``.
        split: split to evaluate.
        weights: EMA or raw weights (``auto``: the EMA copy when the checkpoint has one).
        batch_size: batch size (default: the recipe's evaluation batch).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        num_workers: data-loader workers (default: the recipe's).
        max_batches: stop after this many batches.
        channels_last: NHWC memory format.
        json: also write the results to this JSON file (parent folders are created).
        unsafe_load: read a legacy pickle checkpoint that the safe loader refuses; this runs any code inside the file.
    """

    checkpoint: str
    split: Literal["test", "val", "train"] = "test"
    weights: Literal["auto", "ema", "model"] = "auto"
    batch_size: Annotated[int | None, "must be >= 1"] = None
    device: str = "auto"
    num_workers: Annotated[int | None, "must be >= 0"] = None
    max_batches: Annotated[int | None, "must be >= 1"] = None
    channels_last: bool = False
    json: str | None = None
    unsafe_load: bool = False


@command(
    EvalOptions,
    ("data", DataConfig),
    prog=PROG,
    description="Evaluate a lambdanet training checkpoint on a dataset split. The --data.* keys default to the "
    "checkpoint's own data settings.",
    usage=f"{PROG} CHECKPOINT [--split test] [--json FILE] [--data.key VALUE ...]",
)
def main(opts: EvalOptions, data_argv: list[str]) -> int:
    import lambdanet
    from lambdanet.checkpoint import CHECKPOINT_KEY, CheckpointError, read_checkpoint
    from lambdanet.data.loader import build_splits, data_info, prepare
    from lambdanet.inference import resolve_device
    from lambdanet.train.config import resolve
    from lambdanet.train.evaluate import evaluate

    if opts.json is not None and Path(opts.json).is_dir():
        raise ValueError(f"json={opts.json!r} is a folder; expected a file path")
    device = resolve_device(opts.device)
    ckpt = read_checkpoint(opts.checkpoint, weights=opts.weights, allow_pickle=opts.unsafe_load)
    if ckpt.kind != CHECKPOINT_KEY or "config" not in ckpt.meta:
        raise CheckpointError(f"{opts.checkpoint} is not a lambdanet training checkpoint (it holds no run config)")
    meta = ckpt.meta
    cfg = resolve([meta["config"]], data_argv)
    model = lambdanet.create_model(str(ckpt.model_name), checkpoint=ckpt)
    info = data_info(cfg.data)
    trained = int(meta.get("num_classes", info.num_classes))
    if info.num_classes != trained:
        raise ValueError(
            f"checkpoint {opts.checkpoint} was trained on {trained} classes but data.name={cfg.data.name!r} "
            f"has {info.num_classes}"
        )
    prepare(cfg.data)  # --data.download true fetches and verifies the CIFAR archive
    dataset = getattr(build_splits(cfg.data, cfg.seed), opts.split)
    if dataset is None:
        raise ValueError(f"data.root={cfg.data.root} has no {opts.split}/ split; use --split val")

    batch = opts.batch_size or cfg.data.eval_batch_size or cfg.data.batch_size
    workers = cfg.data.num_workers if opts.num_workers is None else opts.num_workers
    result = evaluate(model, dataset, batch, device, workers, opts.max_batches, opts.channels_last)
    if not math.isfinite(result["loss"]):
        print(f"{PROG}: error: the model gives NaN or Inf (loss {result['loss']})", file=sys.stderr)
        return 1
    result.update(checkpoint=str(opts.checkpoint), model=meta.get("model_name"), data=cfg.data.name)
    result.update(split=opts.split, device=str(device))
    unit, rate = ("characters", "char/s") if "bpc" in result else ("images", "img/s")  # language models: per token
    bpc = f"  bpc {result['bpc']:.4f}" if "bpc" in result else ""
    print(
        f"{meta.get('model_name')} on {cfg.data.name}/{opts.split}: top-1 {result['top1']:.4f}  "
        f"top-5 {result['top5']:.4f}  loss {result['loss']:.4f}{bpc}  {result['images']} {unit}  "
        f"{result['images_per_second']:.1f} {rate} ({device}, batch {batch})"
    )
    if opts.json:
        try:
            Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
            Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise ValueError(f"json={opts.json!r} cannot be written: {e.strerror or e}") from e
    return 0
