"""lambdanet: LambdaNetworks (Bello, ICLR 2021) made exact, fast and pleasant to use."""

__version__ = "0.1.0"

from lambdanet.layers import LambdaLayer, RelativePositionEmbedding  # noqa: E402
from lambdanet.models import ModelMeta, create_model, list_models, model_info, register_model  # noqa: E402

__all__ = [
    "LambdaLayer",
    "ModelMeta",
    "RelativePositionEmbedding",
    "__version__",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
