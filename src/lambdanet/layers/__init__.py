"""Lambda layers and their building blocks. Layers know nothing of models or training."""

from lambdanet.layers.algorithms import ALGORITHMS, choose_algorithm
from lambdanet.layers.core import LambdaLayer, LambdaLayer3d, RelativePositionEmbedding
from lambdanet.layers.lambda_layer1d import LambdaLayer1d

__all__ = [
    "ALGORITHMS",
    "LambdaLayer",
    "LambdaLayer1d",
    "LambdaLayer3d",
    "RelativePositionEmbedding",
    "choose_algorithm",
]
