"""Data configuration, dataset construction with the standard pipelines, and the resumable epoch sampler."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from lambdanet.data import pathfinder, video
from lambdanet.data import transforms as T
from lambdanet.data.datasets import (
    CIFAR_ARCHIVES,
    ArrayDataset,
    DataError,
    ImageFolderDataset,
    TransformDataset,
    download_cifar,
    load_cifar,
    load_digits,
    make_synthetic,
)

__all__ = ["DATASETS", "DataConfig", "DataInfo", "DataSplits", "EpochSampler", "build_splits", "data_info", "prepare"]

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic", "pathfinder", "moving_digits")

# (mean, std) per dataset, on the 0..1 scale.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.305,), (0.376,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5,), (0.25,)),
    "pathfinder": ((0.06,), (0.24,)),
    "moving_digits": ((0.037,), (0.166,)),
}
_NATIVE_SIZE = {
    "digits": 8,
    "cifar10": 32,
    "cifar100": 32,
    "imagefolder": 224,
    "synthetic": 32,
    "pathfinder": 32,
    "moving_digits": 32,
}


@dataclass
class DataConfig:
    """What to train on and how to feed it.

    Attributes:
        name: one of ``digits`` (bundled with scikit-learn, no download), ``cifar10``, ``cifar100``,
            ``imagefolder`` (``root/train/<class>/*``, ``root/val/<class>/*``), ``synthetic``, ``pathfinder``
            (generated, see ``docs/long_range.md``) or ``moving_digits`` (generated clips (1, T, H, W)).
        root: CIFAR archive / folder, the image-folder root, or where pathfinder caches (default ``data``).
        download: fetch the CIFAR archive from the official address into ``root`` and verify its MD5.
        batch_size: images per device and step.
        eval_batch_size: images per device for evaluation (default ``batch_size``).
        num_workers: data-loader worker processes per device.
        image_size: training (and evaluation) side; default the dataset's native size.
        crop_padding: random-crop padding for array datasets (0 disables the crop).
        hflip: random horizontal flips in training.
        randaugment_layers: RandAugment ops per image (0 disables).
        randaugment_magnitude: RandAugment strength (TF scale, 10 = full strength).
        crop_pct: evaluation resize: shorter side to ``image_size / crop_pct``, then centre crop (folders).
        min_crop_scale: smallest area fraction of the random-resized crop (folders).
        val_fraction: hold out this stratified fraction of the training split for validation (digits: of the
            non-test part); 0 validates on the test split (CIFAR convention).
        test_fraction: digits only: fraction of all images in the fixed test split.
        bad_images: ``error`` or ``skip`` unreadable images in image folders (``skip`` warns, naming each file, and
            uses the next readable image).
        max_bad_fraction: in ``skip`` mode, more unreadable images than this fraction is still an error.
        verify_images: in ``skip`` mode, check every image when the dataset opens and report the unreadable ones
            together (one full decode per image and process; catches truncated JPEGs).
        num_classes: synthetic data only: number of classes.
        in_chans: synthetic data only: image channels.
        synthetic_samples: synthetic data only: training images (validation gets a quarter).
        generated_samples: pathfinder and moving_digits: training samples (validation and test get a tenth each).
        pathfinder_difficulty: ``easy``, ``medium`` or ``hard`` (curve length and distractors, see
            ``docs/long_range.md``); ``image_size`` is the generated side (32, 64 or larger).
        pathfinder_length: pathfinder: curve length in pixels (overrides the difficulty's).
        pathfinder_distractors: pathfinder: curves without a dot (overrides the difficulty's).
        video_frames: moving_digits: frames per clip.
        video_label: moving_digits: ``faster`` (class of the faster digit) or ``sum`` (sum of the digits mod 10).
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 0
    image_size: int | None = None
    crop_padding: int = 0
    hflip: bool = False
    randaugment_layers: int = 0
    randaugment_magnitude: float = 10.0
    crop_pct: float = 0.875
    min_crop_scale: float = 0.08
    val_fraction: float = 0.0
    test_fraction: float = 0.2
    bad_images: str = "error"
    max_bad_fraction: float = 0.01
    verify_images: bool = False
    num_classes: int | None = None
    in_chans: int = 3
    synthetic_samples: int = 512
    generated_samples: int = 20000
    pathfinder_difficulty: str = "medium"
    pathfinder_length: int | None = None
    pathfinder_distractors: int | None = None
    video_frames: int = 12
    video_label: str = "faster"

    def validate(self) -> None:
        """Raise ``ValueError`` for values outside their domain."""
        if self.name not in DATASETS:
            raise ValueError(f"data.name={self.name!r}; expected one of {list(DATASETS)}")
        for key in ("batch_size",):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}={getattr(self, key)} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.bad_images not in ("error", "skip"):
            raise ValueError(f"data.bad_images={self.bad_images!r}; expected 'error' or 'skip'")
        if self.name in ("cifar10", "cifar100", "imagefolder") and not self.root:
            raise ValueError(f"data.root is required for data.name={self.name!r} (a path to the data)")
        if self.name == "synthetic" and not self.num_classes:
            raise ValueError("data.num_classes is required for data.name='synthetic'")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        if self.name in ("pathfinder", "moving_digits"):
            _generated(self).validate()
            if self.generated_samples < 1:
                raise ValueError(f"data.generated_samples={self.generated_samples} must be >= 1")

    @property
    def size(self) -> int:
        return self.image_size or _NATIVE_SIZE[self.name]


@dataclass(frozen=True)
class DataInfo:
    num_classes: int
    in_chans: int
    image_size: int


def data_info(cfg: DataConfig) -> DataInfo:
    """Classes, channels and image side of a configured dataset (cheap: lists folders, reads nothing big)."""
    cfg.validate()
    if cfg.name in ("digits", "moving_digits", "pathfinder"):
        return DataInfo(2 if cfg.name == "pathfinder" else 10, 1, cfg.size)
    if cfg.name in CIFAR_ARCHIVES:
        return DataInfo(CIFAR_ARCHIVES[cfg.name].num_classes, 3, cfg.size)
    if cfg.name == "imagefolder":
        train = Path(str(cfg.root)) / "train"
        if not train.is_dir():
            raise DataError(f"image folder {train} does not exist; expected <root>/train and <root>/val")
        classes = [d for d in train.iterdir() if d.is_dir()]
        if not classes:
            raise DataError(f"{train} has no class sub-folders; expected one sub-folder of images per class")
        return DataInfo(len(classes), 3, cfg.size)
    return DataInfo(int(cfg.num_classes or 0), cfg.in_chans, cfg.size)


@dataclass
class DataSplits:
    train: TransformDataset
    val: TransformDataset
    test: TransformDataset
    classes: list[str]


def _array_train(img: Tensor, gen: torch.Generator | None, cfg: DataConfig, stats: Any) -> Tensor:
    assert gen is not None
    if cfg.size != img.shape[-1]:
        img = _resize_tensor(img, cfg.size)
    if cfg.crop_padding:
        img = T.random_crop(img, cfg.size, cfg.crop_padding, gen)
    if cfg.hflip:
        img = T.hflip(img, gen)
    if cfg.randaugment_layers:
        img = T.rand_augment(img, cfg.randaugment_layers, cfg.randaugment_magnitude, gen)
    return T.normalize(img, *stats)


def _array_eval(img: Tensor, gen: torch.Generator | None, cfg: DataConfig, stats: Any) -> Tensor:
    if cfg.size != img.shape[-1]:
        img = _resize_tensor(img, cfg.size)
    return T.normalize(img, *stats)


def _resize_tensor(img: Tensor, size: int) -> Tensor:
    out = torch.nn.functional.interpolate(img.float().unsqueeze(0), size=(size, size), mode="bilinear")
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _folder_train(img: Any, gen: torch.Generator | None, cfg: DataConfig, stats: Any) -> Tensor:
    assert gen is not None
    x = T.pil_to_tensor(T.pil_random_resized_crop(img, cfg.size, gen, scale=(cfg.min_crop_scale, 1.0)))
    if cfg.hflip:
        x = T.hflip(x, gen)
    if cfg.randaugment_layers:
        x = T.rand_augment(x, cfg.randaugment_layers, cfg.randaugment_magnitude, gen)
    return T.normalize(x, *stats)


def _folder_eval(img: Any, gen: torch.Generator | None, cfg: DataConfig, stats: Any) -> Tensor:
    return T.normalize(T.pil_to_tensor(T.pil_resize_center_crop(img, cfg.size, cfg.crop_pct)), *stats)


def _holdout(ds: ArrayDataset, fraction: float) -> tuple[ArrayDataset, ArrayDataset]:
    from sklearn.model_selection import train_test_split

    idx = list(range(len(ds)))
    train, val = train_test_split(idx, test_size=fraction, stratify=ds.labels.numpy(), random_state=0)
    return ds.subset(sorted(train)), ds.subset(sorted(val))


def prepare(cfg: DataConfig) -> None:
    """Downloads and generated caches (run once per machine, before :func:`build_splits`)."""
    if cfg.name in CIFAR_ARCHIVES and cfg.download:
        download_cifar(cfg.name, str(cfg.root))
    if cfg.name == "pathfinder":
        pathfinder.splits_for(cfg)


def _generated(cfg: DataConfig) -> Any:
    """The generator settings of a pathfinder or moving_digits configuration."""
    if cfg.name == "pathfinder":
        return pathfinder.settings_for(cfg)
    return video.settings_for(cfg)


def build_splits(cfg: DataConfig, seed: int = 0) -> DataSplits:
    """Build the train/val/test datasets of ``cfg`` with their pipelines.

    Training pipelines: array data (digits, CIFAR, synthetic) use a padded random crop and flips on tensors;
    folders use a random-resized crop and flips. Evaluation: folders resize then centre-crop. RandAugment is
    optional for both.
    """
    cfg.validate()
    stats = _STATS[cfg.name]
    if cfg.name == "imagefolder":
        checks = {"bad_images": cfg.bad_images, "max_bad_fraction": cfg.max_bad_fraction, "verify": cfg.verify_images}
        train_f = ImageFolderDataset(str(cfg.root), "train", **checks)
        val_f = ImageFolderDataset(str(cfg.root), "val", classes=train_f.classes, **checks)
        tr, ev = partial(_folder_train, cfg=cfg, stats=stats), partial(_folder_eval, cfg=cfg, stats=stats)
        val = TransformDataset(val_f, ev)
        return DataSplits(TransformDataset(train_f, tr, seed, random=True), val, val, train_f.classes)
    if cfg.name == "digits":
        train_a, val_a, test_a = load_digits(cfg.test_fraction, cfg.val_fraction)
    elif cfg.name in ("pathfinder", "moving_digits"):
        arrays = (pathfinder if cfg.name == "pathfinder" else video).splits_for(cfg)
        classes = ["different", "same"] if cfg.name == "pathfinder" else [str(i) for i in range(10)]
        train_a, val_a, test_a = (
            ArrayDataset(torch.from_numpy(arrays[k][0]), torch.from_numpy(arrays[k][1]), classes)
            for k in ("train", "val", "test")
        )
    elif cfg.name in CIFAR_ARCHIVES:
        train_a = load_cifar(cfg.name, str(cfg.root), "train")
        test_a = load_cifar(cfg.name, str(cfg.root), "test")
        train_a, val_a = _holdout(train_a, cfg.val_fraction) if cfg.val_fraction else (train_a, test_a)
    else:
        n = cfg.synthetic_samples
        k = int(cfg.num_classes or 0)
        train_a = make_synthetic(n, k, cfg.size, cfg.in_chans, seed=1)
        test_a = make_synthetic(max(1, n // 4), k, cfg.size, cfg.in_chans, seed=2)
        val_a = test_a
    tr, ev = partial(_array_train, cfg=cfg, stats=stats), partial(_array_eval, cfg=cfg, stats=stats)
    return DataSplits(
        TransformDataset(train_a, tr, seed, random=True),
        TransformDataset(val_a, ev),
        TransformDataset(test_a, ev),
        train_a.classes,
    )


class EpochSampler(Sampler):
    """Seeded per-epoch permutation, split across processes, yielding ``(epoch, index)`` keys.

    Rank ``r`` of ``world_size`` takes every ``world_size``-th index of the (padded) permutation, so the union of
    the ranks' ``i``-th batches of size ``b`` is the single-process ``i``-th batch of size ``world_size * b``.
    The order depends only on ``(seed, epoch)``: a resumed run sees the same data.

    Args:
        num_samples: dataset size.
        shuffle: permute (training) or keep order (evaluation).
        seed: run seed.
        rank: this process's rank.
        world_size: number of processes.
        pad: repeat samples so every rank gets the same count (training); evaluation shards are uneven instead.
    """

    def __init__(
        self, num_samples: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            order += order[: total - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self._indices()])

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.num_samples / self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))
