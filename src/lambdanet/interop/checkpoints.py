"""Reading weights saved by other code into lambdanet models, with strict key and shape checks.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602. The published ImageNet Lambda-ResNet-50 checkpoint of
d-li14/lambda.pytorch (seed 003; 14,995,848 parameters, 78.208% top-1) is a ``torch.save``d dict with a
``state_dict`` (usually with the ``module.`` prefix of DataParallel/DDP) next to ``epoch``, ``arch``, ``best_acc1``
and ``optimizer``. Its ResNet names (``conv1``, ``layer1.0.bn2``, ``downsample.0``, ``fc``) are ours; only the lambda
layer's internals are renamed:

==================================  =============================  =========================================
d-li14 key (shape)                  lambdanet key (shape)          note
==================================  =============================  =========================================
``conv2.conv_qkv.weight``           ``conv2.qkv.weight``           same channel order: (h k) | (u k) | (u v)
``conv2.norm_q.*``, ``norm_v.*``    same                           batch norms of queries and values
``conv2.lambda_conv.weight``        ``conv2.pos.weight``           (k, u, 1, r, r) -> (k, u, r, r)
(k, u, 1, r, r)
``conv2.lambda_conv.bias`` (k,)     ``conv2.pos.bias`` (k,)        needs ``position_bias=True``
==================================  =============================  =========================================

The d-li14 Conv3d slides a (1, r, r) kernel over values laid out as (u, v, H, W): a cross-correlation whose tap for
context position m and query n is ``m - n + r // 2``, which is our relative-position convention, so the kernel is
copied as is. The conformance test (``tests/test_interop.py``) shows equal float64 logits to 1e-9.

Files this module reads (:func:`read_checkpoint`):

- ``"lambdanet"``: written by ``lambdanet train`` or ``lambdanet convert``: a ``lambdanet`` metadata dict
  (``model_name``, ``model_overrides``) and a ``state_dict`` whose keys start with ``model.`` (or ``ema.module.``).
- ``"dli"``: the published d-li14 checkpoint (or any state dict with its lambda-layer names).
- ``"state_dict"``: a plain state dict of a lambdanet model, bare or under a ``state_dict`` key.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointMismatchError",
    "LoadedCheckpoint",
    "convert_dli_state_dict",
    "load_checkpoint_into",
    "load_state_dict_checked",
    "read_checkpoint",
    "strip_prefix",
]

_DLI_RENAMES = ((".conv_qkv.", ".qkv."), (".lambda_conv.", ".pos."))
_LIST_LIMIT = 20


class CheckpointMismatchError(ValueError):
    """Weights that do not fit a model: the missing, unexpected and wrongly shaped keys, each by name.

    Attributes:
        missing: keys of the model that the weights lack.
        unexpected: keys of the weights that the model lacks.
        mismatched: ``(key, weights' shape, model's shape)`` for keys present in both with different shapes.
    """

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            shapes = [f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in mismatched]
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(shapes)}")
        super().__init__(f"weights from {source} do not fit the model; " + "; ".join(parts))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else "")


@dataclass
class LoadedCheckpoint:
    """A checkpoint file read and converted to lambdanet names.

    Attributes:
        path: the file.
        kind: ``"lambdanet"``, ``"dli"`` or ``"state_dict"`` (see the module docstring).
        state_dict: weights under lambdanet names, prefixes removed.
        model_name: the model the file names (``"lambdanet"`` files only).
        overrides: builder overrides the weights need: the stored ``model_overrides`` of lambdanet files,
            ``position_bias=True`` for d-li14 files with a biased lambda convolution.
        extra: other top-level entries of the file (e.g. ``epoch``, ``arch``, ``best_acc1``), tensors excluded.
    """

    path: str
    kind: str
    state_dict: dict[str, Tensor]
    model_name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove ``prefix`` from every key that starts with it (DataParallel/DDP's ``module.`` by default)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _is_dli(state_dict: Mapping[str, Tensor]) -> bool:
    return any(old in k for k in state_dict for old, _ in _DLI_RENAMES)


def convert_dli_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a d-li14/lambda.pytorch Lambda-ResNet state dict to lambdanet names (order kept).

    Strips the ``module.`` prefix, renames ``conv_qkv`` to ``qkv`` and ``lambda_conv`` to ``pos``, and squeezes the
    Conv3d kernel (k, u, 1, r, r) to (k, u, r, r). Other keys pass through unchanged.

    Raises:
        ValueError: a ``lambda_conv.weight`` that is not 5-D with a depth-1 kernel.
    """
    out: dict[str, Tensor] = {}
    for key, value in strip_prefix(state_dict).items():
        new = key
        for old, repl in _DLI_RENAMES:
            new = new.replace(old, repl)
        if key.endswith(".lambda_conv.weight"):
            if value.dim() != 5 or value.shape[2] != 1:
                raise ValueError(
                    f"state_dict[{key!r}] has shape {list(value.shape)}; expected a Conv3d kernel (k, u, 1, r, r)"
                )
            value = value.squeeze(2)
        out[new] = value
    return out


def _torch_load(path: Path) -> Any:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Unsupported global" not in str(e):  # corrupt data, not a refused (but valid) object
                raise
            warnings.warn(
                f"{path} holds objects the safe loader refuses; reading it with the full unpickler "
                "(only load checkpoints you trust)",
                stacklevel=3,
            )
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(
            f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from e


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def read_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read a checkpoint file (published d-li14, lambdanet, or a plain state dict) and convert it to our names.

    The file is read with ``torch.load(weights_only=True)``; only when that refuses it is the full unpickler used
    (with a warning), as for lambdanet's Lightning checkpoints. Only load checkpoints you trust.

    Args:
        path: the file.

    Raises:
        ValueError: a missing or unreadable file, or contents that hold no state dict (the message names the path).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint={str(path)!r} does not exist or is not a file")
    obj = _torch_load(p)
    extra: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        extra = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer") and not isinstance(v, Tensor)}
        extra = {k: v for k, v in extra.items() if isinstance(v, str | int | float | bool)}
    if isinstance(obj, Mapping) and isinstance(obj.get("lambdanet"), Mapping) and _tensor_dict(obj.get("state_dict")):
        meta = obj["lambdanet"]
        state = obj["state_dict"]
        prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise ValueError(f"checkpoint {p} has lambdanet metadata but no weights under the prefix {prefix!r}")
        name = meta.get("model_name")
        return LoadedCheckpoint(
            str(p), "lambdanet", sub, None if name is None else str(name), dict(meta.get("model_overrides") or {})
        )
    if isinstance(obj, Mapping) and _tensor_dict(obj.get("state_dict")):
        state = obj["state_dict"]
    elif _tensor_dict(obj):
        state = obj
    else:
        found = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"checkpoint {p} holds no state dict: expected a dict of tensors, or a dict with a 'state_dict' entry "
            f"(found {found})"
        )
    state = strip_prefix(state)
    if _is_dli(state):
        overrides = {"position_bias": True} if any(k.endswith(".lambda_conv.bias") for k in state) else {}
        return LoadedCheckpoint(str(p), "dli", convert_dli_state_dict(state), None, overrides, extra)
    return LoadedCheckpoint(str(p), "state_dict", dict(state), None, {}, extra)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "state_dict") -> None:
    """Load ``state_dict`` into ``model`` after checking every key and shape.

    Args:
        model: the model (weights are copied in place, converted to the model's dtypes).
        state_dict: weights under the model's names.
        source: where the weights come from, for the error message (e.g. the file name).

    Raises:
        CheckpointMismatchError: missing, unexpected or wrongly shaped keys, all listed by name.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    model.load_state_dict(dict(state_dict), strict=True)


def load_checkpoint_into(model: nn.Module, checkpoint: str | os.PathLike[str] | LoadedCheckpoint) -> nn.Module:
    """Load a checkpoint file (any kind :func:`read_checkpoint` reads) into ``model``, strictly.

    Returns:
        ``model``, with the weights loaded (its train/eval mode unchanged).

    Raises:
        ValueError: unreadable file; :class:`CheckpointMismatchError` when the weights do not fit.
    """
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else read_checkpoint(checkpoint)
    load_state_dict_checked(model, ckpt.state_dict, source=f"checkpoint {ckpt.path} ({ckpt.kind})")
    return model
