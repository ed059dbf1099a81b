"""Building a registered model with weights: ``create_model(name, checkpoint=...)`` and ``pretrained=...``.

Reading files is :mod:`lambdanet.checkpoint`'s job (safe loading, checksums, finite checks); this module builds the
model the file describes, loads the weights strictly and records the file's inference metadata on the model as
``model.pretrained_cfg`` (``classes``, ``mean``, ``std``, ``input_size``, ``crop_pct``, ``source``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lambdanet.models._registry import _build, list_models

__all__ = ["INFERENCE_KEYS", "build_with_weights", "model_from_weights"]

INFERENCE_KEYS = ("classes", "mean", "std", "input_size", "crop_pct")


def _read(checkpoint: Any, pretrained: Any, weights: str, allow_pickle: bool) -> Any:
    from lambdanet.checkpoint import LoadedCheckpoint, read_checkpoint, read_pretrained

    if checkpoint is not None and pretrained is not None:
        raise ValueError("pass checkpoint= or pretrained=, not both")
    if pretrained is not None:
        if isinstance(pretrained, LoadedCheckpoint):
            return pretrained
        if isinstance(pretrained, bool):
            raise ValueError(
                f"pretrained={pretrained!r}: lambdanet publishes no default weights; expected a directory written by "
                "lambdanet.save_pretrained or a Hugging Face Hub id (owner/name)"
            )
        return read_pretrained(pretrained)
    if isinstance(checkpoint, LoadedCheckpoint):
        return checkpoint
    return read_checkpoint(checkpoint, weights=weights, allow_pickle=allow_pickle)


def _inference_cfg(ckpt: Any) -> dict[str, Any]:
    cfg = {k: ckpt.meta[k] for k in INFERENCE_KEYS if k in ckpt.meta}
    if "mean" not in cfg and isinstance(ckpt.meta.get("config"), dict):
        from lambdanet.inference import metadata_from_config  # files written before the inference metadata

        cfg = {**metadata_from_config(ckpt.meta["config"]), **cfg}
    return {**cfg, "source": ckpt.path}


def build_with_weights(
    name: str, overrides: dict[str, Any], checkpoint: Any, pretrained: Any, weights: str, allow_pickle: bool
) -> nn.Module:
    """``create_model`` with ``checkpoint=`` or ``pretrained=``: the file's overrides apply unless given."""
    from lambdanet.checkpoint import load_state_dict_checked

    ckpt = _read(checkpoint, pretrained, weights, allow_pickle)
    if ckpt.model_name is not None and ckpt.model_name != name:
        raise ValueError(f"checkpoint={ckpt.path!r} holds model {ckpt.model_name!r}, not name={name!r}")
    merged = {**ckpt.overrides, **overrides}
    try:
        model = _build(name, merged)
    except (ValueError, TypeError) as e:
        if not ckpt.overrides:
            raise
        raise ValueError(f"checkpoint={ckpt.path!r} ({ckpt.kind}) needs overrides {ckpt.overrides}: {e}") from e
    load_state_dict_checked(model, ckpt.state_dict, source=f"checkpoint {ckpt.path} ({ckpt.kind})")
    model.pretrained_cfg = _inference_cfg(ckpt)  # type: ignore[assignment]
    return model


def model_from_weights(
    source: Any, *, weights: str = "auto", allow_pickle: bool = False, **overrides: Any
) -> nn.Module:
    """The model a lambdanet checkpoint, run directory, pretrained directory or hub id names, with its weights.

    Raises:
        ValueError: the file names no model (a d-li14 file or plain state dict: use ``create_model(name,
            checkpoint=...)``), or any error of :func:`lambdanet.create_model`.
    """
    from lambdanet.checkpoint import CheckpointError

    ckpt = _read(source, None, weights, allow_pickle)
    if ckpt.model_name is None:
        raise CheckpointError(
            f"checkpoint {ckpt.path} ({ckpt.kind}) names no model; build it with create_model(name, checkpoint=...)"
        )
    if ckpt.model_name not in list_models():
        raise CheckpointError(f"checkpoint {ckpt.path} names model {ckpt.model_name!r}, which is not registered here")
    return build_with_weights(ckpt.model_name, overrides, ckpt, None, weights, allow_pickle)
