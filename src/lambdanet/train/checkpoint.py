"""Reading training checkpoints back: clear errors for corrupt files and checkpoints of other models."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lambdanet

__all__ = ["CheckpointError", "load_checkpoint", "model_from_checkpoint"]

CHECKPOINT_KEY = "lambdanet"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not from lambdanet, or does not fit the requested model."""


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a lambdanet training checkpoint onto the CPU.

    Only load checkpoints you trust: Lightning checkpoints are pickles, and when the safe ``weights_only`` loader
    refuses one, the full unpickler is used.

    Raises:
        CheckpointError: missing or corrupt file, or a file without lambdanet metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights_only" not in str(e).lower().replace(" ", "_"):
                raise
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {p}: the file is corrupt or not a PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(CHECKPOINT_KEY), dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{p} is not a lambdanet training checkpoint: it lacks the 'lambdanet' metadata (model name and "
            "overrides) written by `lambdanet train`"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str] = "", weights: str = "auto") -> nn.Module:
    """Rebuild the model of a checkpoint with ``create_model(model_name, **model_overrides)`` and load its weights.

    Args:
        ckpt: a checkpoint from :func:`load_checkpoint`.
        path: its path, for messages.
        weights: ``"ema"`` (the EMA copy), ``"model"`` (the raw weights) or ``"auto"`` (EMA when present).

    Raises:
        CheckpointError: unknown model, or weights that do not fit the model.
    """
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r}; expected 'auto', 'ema' or 'model'")
    meta = ckpt[CHECKPOINT_KEY]
    name, overrides = meta.get("model_name"), dict(meta.get("model_overrides") or {})
    try:
        model = lambdanet.create_model(str(name), **overrides)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} names model {name!r} that cannot be built here: {e}") from e
    state = ckpt["state_dict"]
    averaged = isinstance(ckpt.get("current_model_state"), dict)  # Lightning's EMA: state_dict is the average
    has_ema = averaged or any(k.startswith("ema.module.") for k in state)
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"checkpoint {path} has no EMA weights (trained without train.ema_decay)")
    if averaged and weights == "model":
        state = ckpt["current_model_state"]
    prefix = "ema.module." if not averaged and (weights == "ema" or (weights == "auto" and has_ema)) else "model."
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(sub, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit model {name!r} with {overrides}: {e}") from e
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit model {name!r} with {overrides}: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    return model.eval()
