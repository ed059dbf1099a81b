"""Model families. Importing this package registers every family with the registry."""

from lambdanet.models._registry import ModelMeta, create_model, list_models, model_info, register_model

__all__ = ["ModelMeta", "create_model", "list_models", "model_info", "register_model"]
