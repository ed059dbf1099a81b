"""Model families. Importing this package registers every family with the registry."""

from lambdanet.models._registry import ModelMeta, create_model, list_models, model_info, register_model

__all__ = ["ModelMeta", "create_model", "list_models", "model_info", "register_model"]
import lambdanet.models.cifar  # registers the CIFAR ResNets (leaderj1001/LambdaNetworks, kuangliu/pytorch-cifar)
import lambdanet.models.lm  # registers the language models (lambda_lm_tiny, transformer_lm_tiny)
import lambdanet.models.mobilenet  # registers the MobileNets
import lambdanet.models.resnet  # registers the ResNet-50 family
import lambdanet.models.resnet_rs  # registers the ResNet-RS LambdaResNets
import lambdanet.models.video  # noqa: F401  registers the video networks (video_tiny, lambda_video_tiny)
from lambdanet.models import small  # noqa: F401  (registers lambda_net_tiny)
