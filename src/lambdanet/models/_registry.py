"""The one registry through which everything gets a model.

A family module decorates its builder functions with :func:`register_model`; the builder's name is the
registry key. Code outside ``models/`` calls :func:`create_model` and :func:`list_models`.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ModelMeta", "create_model", "list_models", "model_info", "register_model"]


@dataclass(frozen=True)
class ModelMeta:
    """Facts about a registered model that tests, benchmarks and the CLI read.

    Attributes:
        input_size: native (channels, height, width) of the model.
        test_input_size: small input for smoke tests (equals ``input_size`` for fixed-size models).
        fixed_input_size: True when the model only accepts ``input_size`` (global position lambdas).
        paper_ref: where the architecture comes from (paper table or public repository).
        num_classes: classes of the default head.
        extra: free-form facts (e.g. the published parameter count).
        config: the builder's default layout (a dataclass whose fields are the accepted overrides), for
            ``lambdanet info``; None when the builder's signature lists its overrides.
    """

    input_size: tuple[int, ...] = (3, 224, 224)
    test_input_size: tuple[int, ...] | None = None
    fixed_input_size: bool = False
    paper_ref: str = ""
    num_classes: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)
    config: Any = None

    @property
    def smoke_input_size(self) -> tuple[int, ...]:
        return self.test_input_size or self.input_size


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_META: dict[str, ModelMeta] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, meta: ModelMeta | None = None) -> Callable[..., Any]:
    """Register a builder under its function name. Usable as ``@register_model`` or ``@register_model(meta=...)``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        _META[name] = meta or ModelMeta()
        return builder

    return wrap(fn) if fn is not None else wrap


def _ensure_families() -> None:
    # Importing the package registers every family (models/__init__.py imports them).
    import lambdanet.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching an fnmatch ``pattern`` (e.g. ``"lambda_*"``)."""
    _ensure_families()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelMeta:
    """The :class:`ModelMeta` of a registered model."""
    _ensure_families()
    _check_name(name)
    return _META[name]


def _check_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"model name={name!r} must be a str (see lambdanet.list_models())")
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=3, cutoff=0.75)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model name={name!r}; expected one of the {len(_MODELS)} registered models "
            f"(`lambdanet models` or lambdanet.list_models() lists them).{hint}"
        )


def create_model(
    name: str,
    *,
    checkpoint: Any = None,
    pretrained: Any = None,
    weights: str = "auto",
    allow_pickle: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    Args:
        name: registry key, e.g. ``"lambda_resnet50"``.
        checkpoint: a weights file to load: a ``lambdanet train``/``convert`` checkpoint, the published d-li14
            Lambda-ResNet-50 checkpoint or a plain state dict (see :mod:`lambdanet.checkpoint`).
        pretrained: a pretrained directory (``config.json`` + ``model.safetensors``, from
            :func:`lambdanet.save_pretrained`) or a Hugging Face Hub id holding one.
        weights: for lambdanet checkpoints with an EMA copy: ``"auto"`` (the EMA copy), ``"ema"`` or ``"model"``.
        allow_pickle: read a checkpoint the safe loader refuses with the full unpickler; only for files you trust
            (it can run code).
        **overrides: keyword arguments of the builder (e.g. ``num_classes``, ``dim_k``, ``scope``). With weights,
            the overrides the file implies (its stored ``model_overrides``; ``position_bias=True`` for d-li14 files)
            apply unless given explicitly; every key and shape is checked.

    Raises:
        ValueError: for an unknown name, an override the builder does not accept, or weights that cannot be read
            safely or do not fit (the message names the path and the offending keys).
    """
    _ensure_families()
    _check_name(name)
    if checkpoint is not None or pretrained is not None:
        from lambdanet.models._builder import build_with_weights

        return build_with_weights(name, overrides, checkpoint, pretrained, weights, allow_pickle)
    return _build(name, overrides)


def _build(name: str, overrides: dict[str, Any]) -> nn.Module:
    """Call the builder of a registered ``name`` with checked ``overrides``; the model remembers both."""
    _ensure_families()
    _check_name(name)
    builder = _MODELS[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise ValueError(f"unknown override(s) {unknown} for model {name!r}; expected some of {sorted(params)}")
    model = builder(**overrides)
    model.model_name = name  # type: ignore[assignment]
    model.model_overrides = dict(overrides)  # type: ignore[assignment]
    return model
