"""Training and evaluation on Lightning: configs, the LightningModule, data modules, optimizers and callbacks.

Importing this package is cheap; Lightning loads when :func:`lambdanet.train.run.fit` or the module is used.
"""

from lambdanet.train.config import RunConfig, list_recipes, load_config

__all__ = ["RunConfig", "list_recipes", "load_config"]
