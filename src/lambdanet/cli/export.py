"""``lambdanet export``: a registered model (optionally with a checkpoint) to ONNX or a ``torch.export`` program.

Models of Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602 (see docs/models.md). The batch is dynamic; height
and width are dynamic too unless the model has global position lambdas (fixed input size). The exported graph is
checked against eager PyTorch on a random input before the command reports success.

Examples::

    lambdanet export lambda_net_tiny --format onnx --output tiny.onnx
    lambdanet export lambda_resnet50 --format torch-export --output r50.pt2 --checkpoint converted.ckpt
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambdanet export", description="Export a registered model to ONNX or torch.export."
    )
    p.add_argument("model", help="registered model name (see lambdanet models)")
    p.add_argument("--format", choices=("onnx", "torch-export"), required=True, help="output format")
    p.add_argument("--output", required=True, help="file to write (.onnx or .pt2)")
    p.add_argument("--checkpoint", default=None, help="weights to load (any file create_model(checkpoint=...) reads)")
    p.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"), help="example input size")
    p.add_argument("--batch", type=int, default=2, help="batch of the example input (>= 2; the batch stays dynamic)")
    p.add_argument("--algorithm", default=None, help="position algorithm of every lambda layer (default: conv)")
    p.add_argument("--static-spatial", action="store_true", help="fix height and width to the example's")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with eager PyTorch")
    p.add_argument("--unsafe-load", action="store_true", help="allow a pickle the safe loader refuses (runs its code)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import torch

    import lambdanet
    from lambdanet.interop import export as ex

    try:
        model = lambdanet.create_model(args.model, checkpoint=args.checkpoint, allow_pickle=args.unsafe_load).eval()
        stored = getattr(model, "pretrained_cfg", {}).get("input_size")  # the checkpoint's channels and size
        size = tuple(args.input_size or stored or lambdanet.model_info(args.model).input_size)
        spatial = False if args.static_spatial else "auto"
        start = time.perf_counter()
        if args.format == "onnx":
            path = ex.export_onnx(
                model, args.output, size, batch=args.batch, dynamic_spatial=spatial, algorithm=args.algorithm
            )
            run = lambda x: ex.onnx_forward(path, x)  # noqa: E731
        else:
            program = ex.export_program(
                model, size, batch=args.batch, dynamic_spatial=spatial, algorithm=args.algorithm
            )
            path = ex.save_program(program, args.output)
            module = ex.load_program(path).module()
            run = module
        seconds = time.perf_counter() - start
    except ValueError as e:
        print(f"lambdanet export: error: {e}", file=sys.stderr)
        return 2
    dynamic = "batch" + ("" if args.static_spatial or ex.fixed_spatial(model) else ", height, width")
    print(f"exported {args.model} ({args.format}, dynamic {dynamic}) to {path} in {seconds:.1f} s")
    if not args.no_check:
        x = torch.randn(args.batch + 1, *size)
        with torch.no_grad():
            ref = model(x)
            out = run(x)
        err = (out - ref).abs().max().item()
        scale = ref.abs().max().item()
        ok = err <= 1e-4 * max(scale, 1e-3)
        print(f"check on batch {args.batch + 1}: max |exported - eager| = {err:.3g} (max |eager| = {scale:.3g})")
        if not ok:
            print("lambdanet export: error: exported outputs differ from eager PyTorch", file=sys.stderr)
            return 1
    return 0
