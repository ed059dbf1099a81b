"""lambdanet: LambdaNetworks (Bello, ICLR 2021) made exact, fast and pleasant to use."""

__version__ = "0.1.0"

from lambdanet.checkpoint import save_pretrained
from lambdanet.inference import load_for_inference
from lambdanet.layers import LambdaLayer, LambdaLayer1d, LambdaLayer3d, RelativePositionEmbedding
from lambdanet.models import ModelMeta, create_model, list_models, model_info, register_model
from lambdanet.stats import ModelStats, model_stats

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
