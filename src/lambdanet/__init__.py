"""lambdanet: LambdaNetworks (Bello, ICLR 2021) made exact, fast and pleasant to use.

The public names load on first use (PEP 562), so that ``lambdanet --help`` and other light commands do not import
torch; ``from lambdanet import LambdaLayer`` and ``lambdanet.create_model`` work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "save_pretrained": "lambdanet.checkpoint",
    "load_for_inference": "lambdanet.inference",
    "LambdaLayer": "lambdanet.layers",
    "LambdaLayer1d": "lambdanet.layers",
    "LambdaLayer3d": "lambdanet.layers",
    "RelativePositionEmbedding": "lambdanet.layers",
    "ModelMeta": "lambdanet.models",
    "create_model": "lambdanet.models",
    "list_models": "lambdanet.models",
    "model_info": "lambdanet.models",
    "register_model": "lambdanet.models",
    "ModelStats": "lambdanet.stats",
    "model_stats": "lambdanet.stats",
}
_SUBMODULES = ("bench", "checkpoint", "cli", "data", "inference", "interop", "layers", "models", "stats", "train")

if TYPE_CHECKING:
    from lambdanet.checkpoint import save_pretrained
    from lambdanet.inference import load_for_inference
    from lambdanet.layers import LambdaLayer, LambdaLayer1d, LambdaLayer3d, RelativePositionEmbedding
    from lambdanet.models import ModelMeta, create_model, list_models, model_info, register_model
    from lambdanet.stats import ModelStats, model_stats


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"lambdanet.{name}")
    else:
        raise AttributeError(f"module 'lambdanet' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


__all__ = [
    "LambdaLayer",
    "LambdaLayer1d",
    "LambdaLayer3d",
    "ModelMeta",
    "ModelStats",
    "RelativePositionEmbedding",
    "__version__",
    "create_model",
    "list_models",
    "load_for_inference",
    "model_info",
    "model_stats",
    "register_model",
    "save_pretrained",
]
