"""``lambdanet export``: a registered model (optionally with a checkpoint) to ONNX or a ``torch.export`` program.

Models of Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602 (see docs/models.md). The batch is dynamic; height
and width are dynamic too unless the model has global position lambdas (fixed input size). The exported graph is
checked against eager PyTorch on a random input before the command reports success.

Examples::

    lambdanet export lambda_net_tiny --format onnx --output tiny.onnx
    lambdanet export lambda_resnet50 --format torch-export --output r50.pt2 --checkpoint converted.ckpt
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lambdanet._config import command

__all__ = ["ExportOptions", "main"]

PROG = "lambdanet export"


@dataclass
class ExportOptions:
    """Export.

    Attributes:
        model: registered model name (``lambdanet models`` lists them).
        format: ``onnx`` or ``torch-export`` (a ``.pt2`` program); default: from the ``--output`` extension
            (``.pt2``: torch-export), else onnx.
        output: file to write (default ``<model>.onnx`` or ``<model>.pt2``).
        checkpoint: weights to load (any file ``create_model(checkpoint=...)`` reads).
        input_size: example input size C H W (default: the model's own).
        batch: batch of the example input (>= 2; the batch stays dynamic).
        algorithm: position algorithm of every lambda layer (default: conv).
        static_spatial: fix height and width to the example's.
        check: compare the exported graph with eager PyTorch on a random input (``--no-check`` skips it).
        unsafe_load: read a legacy pickle checkpoint that the safe loader refuses; this runs any code inside the file.
        force: overwrite ``--output`` if it exists.
    """

    model: str
    format: Literal["onnx", "torch-export"] | None = None
    output: str | None = None
    checkpoint: str | None = None
    input_size: tuple[int, int, int] | None = None
    batch: int = 2
    algorithm: str | None = None
    static_spatial: bool = False
    check: bool = True
    unsafe_load: bool = False
    force: bool = False


@command(
    ExportOptions,
    prog=PROG,
    description="Export a registered model to ONNX or torch.export.",
    usage=f"{PROG} MODEL [--output FILE] [--format onnx|torch-export] [--force] [--KEY VALUE ...]",
)
def main(args: ExportOptions) -> int:
    if args.format is None:
        args.format = "torch-export" if str(args.output or "").endswith(".pt2") else "onnx"
    args.output = args.output or f"{args.model}.{'onnx' if args.format == 'onnx' else 'pt2'}"
    import logging
    import warnings

    import torch

    import lambdanet
    from lambdanet.interop import export as ex

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)  # torch's own deprecation
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision notes

    native = lambdanet.model_info(args.model).input_size
    if len(native) == 1:
        raise ValueError(
            f"model={args.model!r} is a language model (token ids in, not images); lambdanet export supports "
            "image and video models only"
        )
    model = lambdanet.create_model(args.model, checkpoint=args.checkpoint, allow_pickle=args.unsafe_load).eval()
    size = tuple(args.input_size or getattr(model, "pretrained_cfg", {}).get("input_size") or native)
    with torch.no_grad():
        try:
            model(torch.zeros(1, *size))
        except RuntimeError as e:
            raise ValueError(f"input_size={list(size)} does not fit {args.model}: {str(e).splitlines()[0]}") from e
    if Path(args.output).exists() and not args.force:
        raise ValueError(f"output={args.output!r} exists; pass --force to overwrite it")
    spatial = False if args.static_spatial else "auto"
    start = time.perf_counter()
    how = {"batch": args.batch, "dynamic_spatial": spatial, "algorithm": args.algorithm}
    if args.format == "onnx":
        path = ex.export_onnx(model, args.output, size, **how)
        run = lambda x: ex.onnx_forward(path, x)  # noqa: E731
    else:
        path = ex.save_program(ex.export_program(model, size, **how), args.output)
        run = ex.load_program(path).module()
    dynamic = "batch" + ("" if args.static_spatial or ex.fixed_spatial(model) else ", height, width")
    print(f"exported {args.model} ({args.format}, dynamic {dynamic}) to {path} in {time.perf_counter() - start:.1f} s")
    if args.check:
        x = torch.randn(args.batch + 1, *size)
        with torch.no_grad():
            ref, out = model(x), run(x)
        err, scale = (out - ref).abs().max().item(), ref.abs().max().item()
        print(f"check on batch {args.batch + 1}: max |exported - eager| = {err:.3g} (max |eager| = {scale:.3g})")
        if err > 1e-4 * max(scale, 1e-3):
            print(f"{PROG}: error: exported outputs differ from eager PyTorch", file=sys.stderr)
            return 1
    return 0
