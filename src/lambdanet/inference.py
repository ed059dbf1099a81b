"""Inference: from a checkpoint, run directory or pretrained directory to labels for images.

:func:`load_for_inference` returns ``(model, transform, classes)``: the model in eval mode with its weights (the EMA
copy when the checkpoint has one), the evaluation transform it was trained with and its class names. The metadata
comes with the weights: ``lambdanet train`` stores it in every checkpoint (:func:`inference_metadata`),
:func:`lambdanet.save_pretrained` in ``config.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lambdanet.data.transforms import EvalTransform

__all__ = [
    "Inference",
    "inference_metadata",
    "load_for_inference",
    "metadata_from_config",
    "predict",
    "resolve_device",
]


class Inference(NamedTuple):
    """What :func:`load_for_inference` returns."""

    model: nn.Module
    transform: EvalTransform
    classes: list[str]


def inference_metadata(data_cfg: Any, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """What inference needs to know about the data a model was trained on (plain lists, numbers and strings).

    Args:
        data_cfg: the run's :class:`~lambdanet.data.loader.DataConfig`.
        classes: class names, indexed by label (image folders: the folder names).

    Returns:
        ``{"classes", "mean", "std", "input_size", "crop_pct"}``; ``crop_pct`` is None where evaluation resizes the
        whole image (array datasets).
    """
    from lambdanet.data.loader import DATASETS, data_info

    spec = DATASETS[data_cfg.name]
    try:
        in_chans = data_info(data_cfg).in_chans
    except (OSError, ValueError):  # an image folder that is no longer there (folders are read as RGB)
        in_chans = data_cfg.in_chans
    return {
        "classes": None if classes is None else [str(c) for c in classes],
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input_size": [int(in_chans), int(data_cfg.size), int(data_cfg.size)],
        "crop_pct": float(data_cfg.crop_pct) if data_cfg.name == "imagefolder" else None,
    }


def metadata_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`inference_metadata` from the run config stored in a checkpoint (no class names)."""
    from lambdanet.data.loader import DataConfig

    data = {k: v for k, v in dict(config.get("data") or {}).items() if k in DataConfig.__dataclass_fields__}
    return {k: v for k, v in inference_metadata(DataConfig(**data)).items() if v is not None}


def resolve_device(name: str) -> str:
    """``name`` checked (``auto``: cuda when available, else cpu): a one-line ValueError for a device name torch
    does not know or hardware this machine lacks. Used by ``predict`` and ``eval``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"device={name!r} is not a torch device; expected cpu, cuda, cuda:1, ...") from err
    if dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        count = backend.device_count() if backend is not None and backend.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={name!r} but {dev.type.upper()} is not available: this machine has 0 {dev.type} device(s); "
                "use cpu"
            )
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={name!r} but this machine has {count} {dev.type} device(s); use cpu")
    return name


def load_for_inference(
    source: str | os.PathLike[str], *, weights: str = "auto", allow_pickle: bool = False, device: str = "cpu"
) -> Inference:
    """A model ready for images: ``model, transform, classes = load_for_inference(path)``.

    Args:
        source: a ``lambdanet train`` checkpoint (``best.ckpt``), a run directory (uses ``checkpoints/best.ckpt``),
            a directory written by :func:`lambdanet.save_pretrained`, or a Hugging Face Hub id holding one.
        weights: ``"auto"`` (the EMA copy when present), ``"ema"`` or ``"model"``.
        allow_pickle: read a checkpoint the safe loader refuses (only for files you trust: it can run code).
        device: where the model goes.

    Returns:
        ``(model, transform, classes)``: the model in eval mode; ``transform(path_or_pil_image)`` gives its input
        tensor (c, h, w); ``classes[i]`` names output ``i`` (the index as text when the file stores no names).

    Raises:
        ValueError: the source cannot be read safely, names no model, or lacks the preprocessing metadata.
    """
    from lambdanet.models._builder import model_from_weights

    device = resolve_device(device)
    model = model_from_weights(source, weights=weights, allow_pickle=allow_pickle).eval().to(device)
    cfg = model.pretrained_cfg
    transform = EvalTransform.from_metadata(cfg)
    head = list(model.parameters())[-1:]  # the last parameter has one entry per output
    classes = cfg.get("classes") or [str(i) for i in range(int(head[0].shape[0]) if head else 0)]
    return Inference(model, transform, list(classes))


@torch.inference_mode()
def predict(
    model: nn.Module,
    transform: EvalTransform,
    classes: Sequence[str],
    images: Sequence[Any],
    topk: int = 5,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Top-k classes of each image (a path or a Pillow image).

    Returns:
        One ``{"path", "top": [{"label", "index", "prob"}, ...]}`` per image, most probable first.

    Raises:
        ValueError: an unreadable image, ``topk`` outside 1..len(classes), or NaN/Inf model outputs.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= len(classes):
        raise ValueError(f"topk={topk!r}; expected an integer in 1..{len(classes)} (the model's classes)")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = torch.stack([transform(img) for img in chunk]).to(device)
        logits: Tensor = model(x).float()
        if logits.dim() != 2 or logits.shape[1] != len(classes):
            raise ValueError(f"the model gives outputs of shape {list(logits.shape)}, not (batch, {len(classes)})")
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(f"the model gives NaN or Inf outputs for {[str(i) for i in chunk]}")
        probs, index = logits.softmax(dim=1).topk(topk, dim=1)
        for img, p_row, i_row in zip(chunk, probs.tolist(), index.tolist(), strict=True):
            top = [{"label": classes[i], "index": i, "prob": p} for p, i in zip(p_row, i_row, strict=True)]
            results.append({"path": str(img) if isinstance(img, str | os.PathLike) else None, "top": top})
    return results
