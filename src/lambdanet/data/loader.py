"""Data configuration, the dataset registry, dataset construction with the standard pipelines, and the resumable
epoch sampler.

Every dataset is one entry of :data:`DATASETS`: a :class:`DatasetSpec` that says what the run links from it (task,
classes or vocabulary size, input shape) and how its splits are built. Adding a dataset is adding one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from lambdanet.data import pathfinder, video
from lambdanet.data import text as text_data
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

__all__ = [
    "DATASETS",
    "DataConfig",
    "DataInfo",
    "DataSplits",
    "DatasetSpec",
    "EpochSampler",
    "build_splits",
    "data_info",
    "prepare",
]

CLASSIFICATION = "classification"
LANGUAGE_MODEL = "language_model"


@dataclass
class DataConfig:
    """What to train on and how to feed it.

    Attributes:
        name: a key of :data:`DATASETS`: ``digits`` (bundled with scikit-learn, no download), ``cifar10``,
            ``cifar100``, ``imagefolder`` (``root/train/<class>/*``, ``root/val/<class>/*``, optional
            ``root/test/<class>/*``), ``synthetic`` or ``pydoc_topics`` (character-level text bundled with Python).
        root: CIFAR archive / folder, or the image-folder root.
        download: fetch the CIFAR archive from the official address into ``root`` and verify its MD5.
        batch_size: samples per device and step.
        eval_batch_size: samples per device for evaluation (default ``batch_size``).
        num_workers: data-loader worker processes per device.
        image_size: training (and evaluation) side; default the dataset's native size.
        crop_padding: random-crop padding for array datasets (0 disables the crop).
        hflip: random horizontal flips in training.
        randaugment_layers: RandAugment ops per image (0 disables).
        randaugment_magnitude: RandAugment strength (TF scale, 10 = full strength).
        crop_pct: evaluation resize: shorter side to ``image_size / crop_pct``, then centre crop (folders).
        min_crop_scale: smallest area fraction of the random-resized crop (folders).
        val_fraction: hold out this stratified fraction of the training split for validation (digits: of the
            non-test part); 0 validates on the test split (CIFAR convention). Text: the contiguous part after the
            training text.
        test_fraction: digits and text only: fraction of all samples in the fixed test split.
        bad_images: ``error`` or ``skip`` unreadable images in image folders (``skip`` warns, naming each file, and
            uses the next readable image).
        max_bad_fraction: in ``skip`` mode, more unreadable images than this fraction is still an error.
        verify_images: in ``skip`` mode, check every image when the dataset opens and report the unreadable ones
            together (one header read per image and process).
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
        seq_len: text only: tokens per window (the model predicts each from those before it).
        max_eval_windows: text only: at most this many evaluation windows per split (None: all).
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
    seq_len: int = 128
    max_eval_windows: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` for values outside their domain."""
        if self.name not in DATASETS:
            raise ValueError(f"data.name={self.name!r}; expected one of {list(DATASETS)}")
        spec = DATASETS[self.name]
        for key in ("batch_size", "seq_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}={getattr(self, key)} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.bad_images not in ("error", "skip"):
            raise ValueError(f"data.bad_images={self.bad_images!r}; expected 'error' or 'skip'")
        if self.root is not None and not (spec.needs_root or spec.uses_root):
            raise ValueError(
                f"data.root={self.root!r} is not used by data.name={self.name!r} (bundled or generated in memory); "
                "drop data.root, or set data.name to the dataset under it"
            )
        if spec.needs_root and not self.root:
            raise ValueError(f"data.root is required for data.name={self.name!r} (a path to the data)")
        if self.name == "synthetic" and not self.num_classes:
            raise ValueError("data.num_classes is required for data.name='synthetic'")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        ranges = (  # (key, low, high, low included, what it means)
            ("test_fraction", 0, 1, True, "a fraction of the samples"),
            ("crop_pct", 0, 1, False, "the centre crop's share of the resized side"),
            ("min_crop_scale", 0, 1, False, "an area fraction"),
            ("max_bad_fraction", 0, 1, True, "a fraction of the images"),
            ("randaugment_magnitude", 0, 30, True, "TF scale: 10 is an op's full strength"),
        )
        for key, lo, hi, lo_in, meaning in ranges:
            value = getattr(self, key)
            if not ((lo <= value) if lo_in else (lo < value)) or not value <= hi:
                raise ValueError(f"data.{key}={value} must be in {'[' if lo_in else '('}{lo}, {hi}] ({meaning})")
        if self.randaugment_layers < 0:
            raise ValueError(f"data.randaugment_layers={self.randaugment_layers} must be >= 0 (0 disables)")
        if self.name in GENERATED:
            GENERATED[self.name].settings_for(self).validate()
            if self.generated_samples < 1:
                raise ValueError(f"data.generated_samples={self.generated_samples} must be >= 1")
        if spec.task == LANGUAGE_MODEL and not (0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5):
            raise ValueError(
                f"data.val_fraction={self.val_fraction} and data.test_fraction={self.test_fraction} must be in "
                f"(0, 0.5) for the text data {self.name!r}"
            )

    @property
    def size(self) -> int:
        return self.image_size or int(DATASETS[self.name].native_size or 0)


@dataclass(frozen=True)
class DataInfo:
    """What a model must fit: task, classes (or vocabulary size) and the shape of one input.

    Attributes:
        task: ``classification`` (images -> one label) or ``language_model`` (token ids -> the next token at
            every position).
        num_classes: classes, or the vocabulary size of a language model.
        input_shape: ``(in_chans, side, side)`` for images, ``(seq_len,)`` for token windows.
        has_test: False when the data has no held-out test split (the final evaluation is on ``val``).
    """

    task: str
    num_classes: int
    input_shape: tuple[int, ...]
    has_test: bool = True

    @property
    def in_chans(self) -> int:
        return self.input_shape[0] if self.task == CLASSIFICATION else 0

    @property
    def image_size(self) -> int:
        return self.input_shape[-1] if self.task == CLASSIFICATION else 0


@dataclass
class DataSplits:
    """The datasets of a run. ``test`` is None when the data has no held-out test split.

    ``classes`` names the labels: class names for images, the characters in id order for text (the vocabulary).
    """

    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: list[str]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset.

    Attributes:
        info: ``cfg -> DataInfo``, cheap (lists folders or reads metadata; no pixels).
        build: ``(cfg, seed) -> DataSplits`` with the training and evaluation pipelines.
        task: ``classification`` or ``language_model``.
        mean: per-channel normalisation mean (0..1 scale), images only.
        std: per-channel normalisation std.
        native_size: the image side used when ``data.image_size`` is not set.
        needs_root: ``data.root`` is required.
        uses_root: ``data.root`` is read (required ones, and optional cache folders); setting it for a dataset that
            does not read it is an error rather than silently ignored.
        prepare: run once per machine before ``build`` (downloads), or None.
    """

    info: Callable[[DataConfig], DataInfo]
    build: Callable[[DataConfig, int], DataSplits]
    task: str = CLASSIFICATION
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    native_size: int | None = None
    needs_root: bool = False
    uses_root: bool = False
    prepare: Callable[[DataConfig], None] | None = None


def data_info(cfg: DataConfig) -> DataInfo:
    """Task, classes and input shape of a configured dataset (cheap: lists folders, reads nothing big)."""
    cfg.validate()
    return DATASETS[cfg.name].info(cfg)


def prepare(cfg: DataConfig) -> None:
    """Downloads (run once per machine, before :func:`build_splits`)."""
    spec = DATASETS[cfg.name]
    if spec.prepare is not None:
        spec.prepare(cfg)


def build_splits(cfg: DataConfig, seed: int = 0) -> DataSplits:
    """Build the train/val/test datasets of ``cfg`` with their pipelines.

    Training pipelines: array data (digits, CIFAR, synthetic) use a padded random crop and flips on tensors;
    folders use a random-resized crop and flips. Evaluation: folders resize then centre-crop. RandAugment is
    optional for both. Text: next-character windows (:mod:`lambdanet.data.text`).
    """
    cfg.validate()
    return DATASETS[cfg.name].build(cfg, seed)


# ---------------------------------------------------------------- image pipelines


def _finish(x: Tensor, gen: torch.Generator | None, cfg: DataConfig) -> Tensor:
    """Flips and RandAugment in training (``gen`` given), then normalisation with the dataset's statistics."""
    if gen is not None and cfg.hflip:
        x = T.hflip(x, gen)
    if gen is not None and cfg.randaugment_layers:
        x = T.rand_augment(x, cfg.randaugment_layers, cfg.randaugment_magnitude, gen)
    return T.normalize(x, DATASETS[cfg.name].mean, DATASETS[cfg.name].std)


def _array_pipeline(img: Tensor, gen: torch.Generator | None, cfg: DataConfig) -> Tensor:
    """Array data: resized to ``data.size`` (bilinear, rounded to uint8); in training a padded random crop."""
    if cfg.size != img.shape[-1]:
        out = torch.nn.functional.interpolate(img.float().unsqueeze(0), size=(cfg.size, cfg.size), mode="bilinear")
        img = out[0].round().clamp(0, 255).to(torch.uint8)
    if gen is not None and cfg.crop_padding:
        img = T.random_crop(img, cfg.size, cfg.crop_padding, gen)
    return _finish(img, gen, cfg)


def _folder_pipeline(img: Any, gen: torch.Generator | None, cfg: DataConfig) -> Tensor:
    """Image files: a random-resized crop in training; resize and centre crop (``data.crop_pct``) in evaluation."""
    if gen is None:
        return _finish(T.pil_to_tensor(T.pil_resize_center_crop(img, cfg.size, cfg.crop_pct)), gen, cfg)
    crop = T.pil_random_resized_crop(img, cfg.size, gen, scale=(cfg.min_crop_scale, 1.0))
    return _finish(T.pil_to_tensor(crop), gen, cfg)


def _holdout(ds: ArrayDataset, fraction: float) -> tuple[ArrayDataset, ArrayDataset]:
    from sklearn.model_selection import train_test_split

    idx = list(range(len(ds)))
    train, val = train_test_split(idx, test_size=fraction, stratify=ds.labels.numpy(), random_state=0)
    return ds.subset(sorted(train)), ds.subset(sorted(val))


def _array_splits(cfg: DataConfig, seed: int, train: ArrayDataset, val: ArrayDataset, test: ArrayDataset) -> DataSplits:
    pipeline = partial(_array_pipeline, cfg=cfg)
    return DataSplits(
        TransformDataset(train, pipeline, seed, random=True),
        TransformDataset(val, pipeline),
        TransformDataset(test, pipeline),
        train.classes,
    )


# ---------------------------------------------------------------- the registered datasets


def _digits_splits(cfg: DataConfig, seed: int) -> DataSplits:
    return _array_splits(cfg, seed, *load_digits(cfg.test_fraction, cfg.val_fraction))


def _cifar_splits(cfg: DataConfig, seed: int) -> DataSplits:
    train = load_cifar(cfg.name, str(cfg.root), "train")
    test = load_cifar(cfg.name, str(cfg.root), "test")
    train, val = _holdout(train, cfg.val_fraction) if cfg.val_fraction else (train, test)
    return _array_splits(cfg, seed, train, val, test)


def _cifar_prepare(cfg: DataConfig) -> None:
    if cfg.download:
        download_cifar(cfg.name, str(cfg.root))


def _synthetic_splits(cfg: DataConfig, seed: int) -> DataSplits:
    n, k = cfg.synthetic_samples, int(cfg.num_classes or 0)
    train = make_synthetic(n, k, cfg.size, cfg.in_chans, seed=1)
    test = make_synthetic(max(1, n // 4), k, cfg.size, cfg.in_chans, seed=2)
    return _array_splits(cfg, seed, train, test, test)


def _folder_classes(root: Path, split: str) -> list[str]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"image folder {folder} does not exist; expected <root>/train, <root>/val and optional <root>/test"
        )
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{folder} has no class sub-folders; expected one sub-folder of images per class")
    return classes


def _folder_info(cfg: DataConfig) -> DataInfo:
    root = Path(str(cfg.root))
    classes = _folder_classes(root, "train")
    _folder_classes(root, "val")
    return DataInfo(CLASSIFICATION, len(classes), (3, cfg.size, cfg.size), has_test=(root / "test").is_dir())


def _folder_splits(cfg: DataConfig, seed: int) -> DataSplits:
    checks = {"bad_images": cfg.bad_images, "max_bad_fraction": cfg.max_bad_fraction, "verify": cfg.verify_images}
    pipeline = partial(_folder_pipeline, cfg=cfg)
    train = ImageFolderDataset(str(cfg.root), "train", **checks)
    val = TransformDataset(ImageFolderDataset(str(cfg.root), "val", classes=train.classes, **checks), pipeline)
    test = None
    if (Path(str(cfg.root)) / "test").is_dir():
        test = TransformDataset(ImageFolderDataset(str(cfg.root), "test", classes=train.classes, **checks), pipeline)
    return DataSplits(TransformDataset(train, pipeline, seed, random=True), val, test, train.classes)


def _text_vocab(cfg: DataConfig) -> text_data.CharVocab:
    return text_data.CharVocab.from_text(text_data.load_corpus(cfg.name))


def _text_info(cfg: DataConfig) -> DataInfo:
    return DataInfo(LANGUAGE_MODEL, len(_text_vocab(cfg)), (cfg.seq_len,))


def _text_splits(cfg: DataConfig, seed: int) -> DataSplits:
    text = text_data.load_corpus(cfg.name)
    vocab = text_data.CharVocab.from_text(text)
    train, val, test = text_data.split_ids(vocab.encode(text), cfg.val_fraction, cfg.test_fraction)
    limit = cfg.max_eval_windows
    return DataSplits(
        text_data.TextWindows(train, cfg.seq_len, shift=True, seed=seed),
        text_data.TextWindows(val, cfg.seq_len, limit=limit),
        text_data.TextWindows(test, cfg.seq_len, limit=limit),
        vocab.chars,
    )


def _fixed(task: str, num_classes: Callable[[DataConfig], int], in_chans: Callable[[DataConfig], int]) -> Callable:
    return lambda cfg: DataInfo(task, num_classes(cfg), (in_chans(cfg), cfg.size, cfg.size))


#: The generated datasets: their module (``settings_for``, ``splits_for``) and class names.
GENERATED = {"pathfinder": pathfinder, "moving_digits": video}
_GENERATED_CLASSES = {"pathfinder": ["different", "same"], "moving_digits": [str(i) for i in range(10)]}


def _generated_info(cfg: DataConfig) -> DataInfo:
    frames = (cfg.video_frames,) if cfg.name == "moving_digits" else ()
    return DataInfo(CLASSIFICATION, len(_GENERATED_CLASSES[cfg.name]), (1, *frames, cfg.size, cfg.size))


def _generate_and_cache(cfg: DataConfig) -> None:
    GENERATED[cfg.name].splits_for(cfg)


def _generated_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Pathfinder images (1, H, W) or moving-digits clips (1, T, H, W), generated from fixed seeds (pathfinder is
    cached under ``data.root``)."""
    arrays = GENERATED[cfg.name].splits_for(cfg)
    classes = _GENERATED_CLASSES[cfg.name]
    train, val, test = (
        ArrayDataset(torch.from_numpy(arrays[k][0]), torch.from_numpy(arrays[k][1]), classes)
        for k in ("train", "val", "test")
    )
    return _array_splits(cfg, seed, train, val, test)


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        _fixed(CLASSIFICATION, lambda c: 10, lambda c: 1), _digits_splits, mean=(0.305,), std=(0.376,), native_size=8
    ),
    **{
        name: DatasetSpec(
            _fixed(CLASSIFICATION, lambda c: CIFAR_ARCHIVES[c.name].num_classes, lambda c: 3),
            _cifar_splits,
            mean=mean,
            std=std,
            native_size=32,
            needs_root=True,
            prepare=_cifar_prepare,
        )
        for name, mean, std in (
            ("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            ("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        )
    },
    "imagefolder": DatasetSpec(
        _folder_info, _folder_splits, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), native_size=224,
        needs_root=True,
    ),
    "synthetic": DatasetSpec(
        _fixed(CLASSIFICATION, lambda c: int(c.num_classes or 0), lambda c: c.in_chans),
        _synthetic_splits,
        mean=(0.5,),
        std=(0.25,),
        native_size=32,
    ),
    "pydoc_topics": DatasetSpec(_text_info, _text_splits, task=LANGUAGE_MODEL),
    "pathfinder": DatasetSpec(
        _generated_info, _generated_splits, mean=(0.06,), std=(0.24,), native_size=32,
        prepare=_generate_and_cache,
        uses_root=True,
    ),
    "moving_digits": DatasetSpec(_generated_info, _generated_splits, mean=(0.037,), std=(0.166,), native_size=32),
}  # fmt: skip


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
