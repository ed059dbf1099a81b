"""``LambdaDataModule``: one LightningDataModule for every dataset of :mod:`lambdanet.data` (images and text).

Training batches come from :class:`~lambdanet.data.loader.EpochSampler` (seeded by run seed and epoch, sharded
by rank), so data order survives resuming and matches between 1 and n processes at the same global batch.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lambdanet.data.loader import DataConfig, DataSplits, EpochSampler, build_splits

__all__ = ["LambdaDataModule"]


class LambdaDataModule(pl.LightningDataModule):
    """Datasets and loaders of a :class:`DataConfig`.

    Args:
        cfg: data configuration.
        seed: run seed (data order and augmentation).
        splits: datasets already built from ``cfg`` (e.g. to check them before a run starts); built in ``setup``
            otherwise.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, splits: DataSplits | None = None) -> None:
        super().__init__()
        self.cfg, self.seed, self.splits = cfg, seed, splits

    def setup(self, stage: str | None = None) -> None:
        self.splits = self.splits or build_splits(self.cfg, self.seed)

    def _loader(self, dataset: Any, train: bool) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = EpochSampler(len(dataset), shuffle=train, seed=self.seed, rank=rank, world_size=world, pad=train)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size),
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            drop_last=train and len(sampler) >= self.cfg.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val, train=False)

    def test_dataloader(self) -> DataLoader:
        if self.splits.test is None:
            raise ValueError(f"data.name={self.cfg.name!r} at {self.cfg.root} has no test split")
        return self._loader(self.splits.test, train=False)
