"""Interoperability: published checkpoints, other implementations' weights, ONNX and ``torch.export``.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602. See docs/interop.md.

- :func:`read_checkpoint`, :func:`load_checkpoint_into`: the published d-li14 Lambda-ResNet-50 checkpoint,
  lambdanet checkpoints and plain state dicts, read safely with every key and shape checked (re-exported from
  :mod:`lambdanet.checkpoint`; ``create_model(name, checkpoint=PATH)`` uses them).
- :func:`from_lucidrains`: a :class:`~lambdanet.layers.LambdaLayer` from a ``lambda_networks.LambdaLayer``.
- :func:`export_onnx`, :func:`export_program`: ONNX files and ``torch.export`` programs.
"""

from lambdanet.checkpoint import (
    CheckpointMismatchError,
    LoadedCheckpoint,
    convert_dli_state_dict,
    load_checkpoint_into,
    load_state_dict_checked,
    read_checkpoint,
    strip_prefix,
)
from lambdanet.interop.export import (
    export_onnx,
    export_program,
    fixed_spatial,
    load_program,
    onnx_forward,
    onnx_metadata,
    save_program,
    tracing_setup,
)
from lambdanet.interop.lucidrains import from_lucidrains

__all__ = [
    "CheckpointMismatchError",
    "LoadedCheckpoint",
    "convert_dli_state_dict",
    "export_onnx",
    "export_program",
    "fixed_spatial",
    "from_lucidrains",
    "load_checkpoint_into",
    "load_program",
    "load_state_dict_checked",
    "onnx_forward",
    "onnx_metadata",
    "read_checkpoint",
    "save_program",
    "strip_prefix",
    "tracing_setup",
]
