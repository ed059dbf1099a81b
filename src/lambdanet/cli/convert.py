"""``lambdanet convert``: a published checkpoint -> a lambdanet checkpoint that ``lambdanet eval`` reads.

Reads the published Lambda-ResNet-50 ImageNet checkpoint of d-li14/lambda.pytorch (Bello, "LambdaNetworks", ICLR 2021,
arXiv:2102.08602) or any file :func:`lambdanet.interop.read_checkpoint` understands, builds the model with
``create_model(MODEL, checkpoint=SRC)`` (every key and shape checked) and writes the layout of ``lambdanet train``
checkpoints with the run ``config`` of a recipe (docs/interop.md lists the entries).

Examples::

    lambdanet convert model_best.pth.tar lambda_resnet50_dli.ckpt
    lambdanet eval lambda_resnet50_dli.ckpt --data.root ~/data/imagenet --split val
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lambdanet._config import command

__all__ = ["ConvertOptions", "main"]

PROG = "lambdanet convert"


@dataclass
class ConvertOptions:
    """Conversion.

    Attributes:
        src: the published checkpoint (a ``torch.save``'d dict with a state_dict; a ``module.`` prefix is fine).
        dst: the lambdanet checkpoint to write (``.ckpt``).
        model: registered model the weights are for.
        recipe: training recipe whose data settings ``lambdanet eval`` uses.
        data_root: image-folder root stored in the config (``root/train``, ``root/val``).
        force: overwrite ``dst`` if it exists.
        unsafe_load: read a legacy pickle that the safe loader refuses; this runs any code inside the file.
    """

    src: str
    dst: str
    model: str = "lambda_resnet50"
    recipe: str = "imagenet_lambda_resnet50"
    data_root: str | None = None
    force: bool = False
    unsafe_load: bool = False


@command(
    ConvertOptions,
    prog=PROG,
    description="Convert a published checkpoint (d-li14 Lambda-ResNet-50) into a lambdanet checkpoint.",
    usage=f"{PROG} SRC DST [--model NAME] [--recipe NAME] [--data-root DIR] [--force] [--unsafe-load]",
)
def main(args: ConvertOptions) -> int:
    import lambdanet
    from lambdanet.checkpoint import atomic_save, read_checkpoint, seal
    from lambdanet.train.config import load_config, to_dict

    dst = Path(args.dst)
    if dst.exists() and not args.force:
        raise ValueError(f"dst={str(dst)!r} exists; pass --force to overwrite it")
    if Path(args.src).resolve() == dst.resolve():
        raise ValueError(f"dst={str(dst)!r} is the source file; choose another path")
    ckpt = read_checkpoint(args.src, allow_pickle=args.unsafe_load)
    model = lambdanet.create_model(args.model, checkpoint=ckpt)
    overrides = dict(model.model_overrides)
    data = {"root": args.data_root} if args.data_root else {}
    config = to_dict(load_config(args.recipe, {"model": {"name": args.model, "overrides": overrides}, "data": data}))
    state = {"model." + k: v for k, v in model.state_dict().items()}
    num_classes = int(getattr(model, "num_classes", config["model"]["overrides"].get("num_classes", 0)) or 0)
    names = {"model_name": args.model, "model_overrides": overrides}  # also at the top level, for other readers
    source = {"path": str(args.src), "kind": ckpt.kind, **ckpt.extra}
    meta = {**names, "num_classes": num_classes, "config": config, "source": source}
    atomic_save(seal({"lambdanet": meta, **names, "state_dict": state}), dst)  # folders created
    params = sum(p.numel() for p in model.parameters())
    print(
        f"converted {args.src} ({ckpt.kind}, {len(ckpt.state_dict)} tensors) -> {dst}: {args.model} "
        f"with {overrides}, {params:,} parameters, {num_classes} classes"
    )
    return 0
