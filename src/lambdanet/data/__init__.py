"""Datasets and tensor transforms for training lambda networks (no torchvision)."""

from lambdanet.data.datasets import (
    ArrayDataset,
    DataError,
    ImageFolderDataset,
    TransformDataset,
    download_cifar,
    load_cifar,
    load_digits,
    make_synthetic,
)
from lambdanet.data.loader import DataConfig, DataSplits, EpochSampler, build_splits, data_info

__all__ = [
    "ArrayDataset",
    "DataConfig",
    "DataError",
    "DataSplits",
    "EpochSampler",
    "ImageFolderDataset",
    "TransformDataset",
    "build_splits",
    "data_info",
    "download_cifar",
    "load_cifar",
    "load_digits",
    "make_synthetic",
]
