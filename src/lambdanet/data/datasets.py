"""Datasets: scikit-learn's 8x8 digits, CIFAR-10/100 python archives, ImageNet-style folders and synthetic images.

Array datasets hold uint8 images (n, c, hh, ww); folder datasets decode with Pillow on access. All raise
:class:`DataError` (a ``ValueError``) naming the path when data is missing, corrupt or of the wrong kind.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CIFAR_ARCHIVES",
    "ArrayDataset",
    "DataError",
    "ImageFolderDataset",
    "TransformDataset",
    "download_cifar",
    "load_cifar",
    "load_digits",
    "make_synthetic",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DataError(ValueError):
    """Missing, corrupt or mismatched data. The message names the offending path."""


@dataclass
class ArrayDataset(Dataset):
    """Images held in memory.

    Attributes:
        images: uint8 tensor (n, c, hh, ww), or (n, c, t, hh, ww) for video clips.
        labels: int64 tensor (n,).
        classes: class names, indexed by label.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim not in (4, 5):
            raise ValueError(
                f"images must be uint8 (n, c, hh, ww) or clips (n, c, t, hh, ww), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, indices: Any) -> ArrayDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes)


# ---------------------------------------------------------------- digits (bundled with scikit-learn)


def load_digits(test_fraction: float = 0.2, val_fraction: float = 0.1) -> tuple[ArrayDataset, ...]:
    """scikit-learn's 1797 8x8 handwritten digits, split (train, val, test) stratified with a fixed seed.

    The split does not depend on the run's seed: ``test_fraction`` of all images (seed 0) is the test split, and
    ``val_fraction`` of the rest (seed 0) the validation split used to pick the best checkpoint. Pixel values
    0..16 become 0..255.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    bunch = _sk_load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round()).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    full = ArrayDataset(images, labels, [str(i) for i in range(10)])
    idx = list(range(len(labels)))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=bunch.target, random_state=0)
    if val_fraction > 0:
        train, val = train_test_split(rest, test_size=val_fraction, stratify=bunch.target[rest], random_state=0)
    else:
        train, val = rest, test
    return full.subset(sorted(train)), full.subset(sorted(val)), full.subset(sorted(test))


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100 python archives


@dataclass(frozen=True)
class _CifarArchive:
    filename: str
    url: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int


CIFAR_ARCHIVES: dict[str, _CifarArchive] = {
    "cifar10": _CifarArchive(
        filename="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
    ),
    "cifar100": _CifarArchive(
        filename="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test="test",
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
    ),
}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar(name: str, root: str | os.PathLike[str]) -> Path:
    """Fetch the official CIFAR archive into ``root`` (unless a verified copy is there) and check its MD5.

    Returns:
        Path of the verified ``.tar.gz``.

    Raises:
        DataError: when the download fails or the checksum does not match the official one.
    """
    spec = _cifar_spec(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.filename
    if target.is_file():
        with contextlib.suppress(DataError):  # a damaged or foreign file is downloaded again
            _check_archive_md5(target, spec)
            return target
    partial = target.with_name(target.name + ".part")
    print(f"downloading {spec.url} -> {target}")
    try:
        urllib.request.urlretrieve(spec.url, partial)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise DataError(f"could not download {spec.url} to {target}: {e}") from e
    got = _md5(partial)
    if got != spec.md5:
        partial.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {spec.url}: md5 {got}, expected {spec.md5}; download again")
    os.replace(partial, target)
    return target


def _cifar_spec(name: str) -> _CifarArchive:
    if name not in CIFAR_ARCHIVES:
        raise ValueError(f"CIFAR name={name!r}; expected one of {sorted(CIFAR_ARCHIVES)}")
    return CIFAR_ARCHIVES[name]


# Globals a CIFAR pickle may name: numpy array and dtype reconstruction (Python 2 and 3 pickles, protocols 2 to 5)
# and the codec Python 3 uses to pickle bytes. Everything else (os.system, builtins.exec, ...) is refused.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only plain containers, numbers, strings, bytes and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays and builtins)")
        import numpy as np

        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        if name == "encode":
            import codecs

            return codecs.encode
        from numpy._core import multiarray, numeric

        return getattr(numeric if name == "_frombuffer" else multiarray, name)


def _unpickle(blob: bytes, where: str) -> dict[bytes, Any]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{where} is not a readable CIFAR pickle: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, expected a CIFAR dict")
    return obj


def _check_archive_md5(path: Path, spec: _CifarArchive) -> None:
    """Compare ``path`` with the official MD5 once; a marker ``<archive>.md5-ok`` keyed by size and mtime caches it."""
    stat = path.stat()
    key = {"md5": spec.md5, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = path.with_name(path.name + ".md5-ok")
    try:
        if json.loads(marker.read_text()) == key:
            return
    except (OSError, ValueError):
        pass
    got = _md5(path)
    if got != spec.md5:
        raise DataError(
            f"{path} has md5 {got}, expected the official {spec.md5}: the archive is damaged or not the official "
            f"{spec.filename}; delete it and download again (--data.download true)"
        )
    with contextlib.suppress(OSError):  # a read-only data folder: check again next time
        marker.write_text(json.dumps(key) + "\n")


def _read_cifar_members(name: str, root: Path, members: list[str]) -> tuple[dict[str, bytes], str]:
    """Read ``members`` from the archive or the extracted folder at ``root``; return them and where they came from."""
    spec = _cifar_spec(name)
    candidates = [root] if root.name.endswith(".gz") else []
    candidates += [root / spec.filename]
    for path in candidates:
        if not path.is_file():
            continue
        _check_archive_md5(path, spec)
        wanted = {f"{spec.folder}/{member}": member for member in members}
        out: dict[str, bytes] = {}
        names: set[str] = set()
        try:
            with gzip.open(path) as stream:
                with tarfile.open(fileobj=stream, mode="r|") as tar:  # one pass, in archive order
                    for info in tar:
                        names.add(info.name)
                        if info.name in wanted and info.isfile():
                            f = tar.extractfile(info)
                            if f is not None:
                                out[wanted[info.name]] = f.read()
                while stream.read(1 << 20):  # read to the end, so the gzip CRC-32 and length are checked
                    pass
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path} is not a readable tar.gz archive ({e}); expected {spec.filename}") from e
        if f"{spec.folder}/{spec.test}" not in names:
            other = [k for k, s in CIFAR_ARCHIVES.items() if f"{s.folder}/{s.test}" in names]
            hint = f" (it looks like the {other[0]} archive)" if other else ""
            raise DataError(f"{path} is not the {name} archive{hint}: member {spec.folder}/{spec.test} is missing")
        missing = [full for full, member in wanted.items() if member not in out]
        if missing:
            raise DataError(f"{path}: member {missing[0]} is missing or not a file")
        return out, str(path)
    for folder in (root / spec.folder, root):
        if (folder / spec.test).is_file():
            out = {}
            for member in members:
                path = folder / member
                if not path.is_file():
                    raise DataError(f"{path} is missing from the extracted {name} folder {folder}")
                out[member] = path.read_bytes()
            return out, str(folder)
    raise DataError(
        f"no {name} data at {root}: expected the archive {spec.filename} or the extracted folder {spec.folder}/ "
        f"(pass --data.download true to fetch it from {spec.url})"
    )


def load_cifar(name: str, root: str | os.PathLike[str], split: str) -> ArrayDataset:
    """Read a CIFAR split from the official python archive (``.tar.gz``) or its extracted folder.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the archive, a folder holding it, or the extracted folder.
        split: ``"train"`` or ``"test"``.
    """
    spec = _cifar_spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    batches = list(spec.train if split == "train" else (spec.test,))
    blobs, where = _read_cifar_members(name, Path(root), [spec.meta, *batches])
    meta = _unpickle(blobs[spec.meta], f"{where}:{spec.meta}")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(spec.names_key, [])]
    if len(classes) != spec.num_classes:
        raise DataError(f"{where}:{spec.meta} lists {len(classes)} classes, expected {spec.num_classes} for {name}")
    images, labels = [], []
    for member in batches:
        batch = _unpickle(blobs[member], f"{where}:{member}")
        if b"data" not in batch or spec.label_key not in batch:
            raise DataError(f"{where}:{member} lacks b'data' or {spec.label_key!r}: is this the {name} archive?")
        data = torch.as_tensor(batch[b"data"])
        if data.dtype != torch.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{where}:{member}: data is {data.dtype} {tuple(data.shape)}, expected uint8 (n, 3072)")
        lab = torch.as_tensor(batch[spec.label_key], dtype=torch.long)
        if len(lab) != len(data):
            raise DataError(f"{where}:{member}: {len(data)} images but {len(lab)} labels")
        if len(lab) and (lab.min() < 0 or lab.max() >= spec.num_classes):
            raise DataError(f"{where}:{member}: labels outside 0..{spec.num_classes - 1}")
        images.append(data.view(-1, 3, 32, 32))
        labels.append(lab)
    return ArrayDataset(torch.cat(images), torch.cat(labels), classes)


# ---------------------------------------------------------------- ImageNet-style folders


def _list_classes(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataError(f"image folder {split_dir} does not exist; expected <root>/train and <root>/val")
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class sub-folders; expected one sub-folder of images per class")
    files = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) for d in classes}
    empty = [str(split_dir / name) for name, fs in files.items() if not fs]
    if empty:
        raise DataError(f"empty class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}")
    return files


def _to_rgb(img: Any, path: Path) -> Any:
    """A decoded Pillow image -> 8-bit RGB, rescaling 16-bit and float images instead of clipping them.

    16-bit images (modes ``I;16*``, and 16-bit PNGs that Pillow opens as ``I``) map 0..65535 to 0..255; float images
    (mode ``F``) must lie in [0, 1] and map to 0..255. Other 32-bit integer images have no defined range and are
    refused, naming the file.
    """
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        import numpy as np

        arr = np.asarray(img).astype(np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"16-bit image {path} holds values outside 0..65535 ({arr.min()}..{arr.max()})")
        arr8 = (arr * 255 + 32767) // 65535  # exact integer rounding of v * 255 / 65535
        return Image.fromarray(arr8.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise DataError(
                f"float image {path} has values in [{arr.min():.4g}, {arr.max():.4g}]; expected finite values in "
                "[0, 1] (convert it to 8 or 16 bits)"
            )
        return Image.fromarray(np.rint(arr * 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "I;32", "I;32B", "I;32L"):
        raise DataError(
            f"32-bit integer image {path} (mode {mode}) has no defined value range; convert it to 8 or 16 bits"
        )
    return img.convert("RGB")


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be used (header check, full decode, bit-depth conversion), or None."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()  # container checks (e.g. PNG chunk CRCs)
        with Image.open(path) as img:
            img.load()  # full decode: catches truncated JPEG data, which verify() does not read
            _to_rgb(img, path)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


class ImageFolderDataset(Dataset):
    """``<root>/<split>/<class>/<image>`` decoded with Pillow to 8-bit RGB (16-bit and float images rescaled).

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        split: sub-folder to read.
        classes: expected class names (e.g. those of ``train/``); a mismatch raises :class:`DataError`.
        bad_images: ``"error"`` raises on the first unreadable image. ``"skip"`` warns (naming the file) and
            substitutes the next readable image whenever one fails to decode.
        max_bad_fraction: in ``"skip"`` mode, more unreadable images than this fraction is still an error.
        verify: in ``"skip"`` mode, decode every file up front, report all unreadable ones in one warning and leave
            them out (costs one full decode per image and process).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        classes: list[str] | None = None,
        bad_images: str = "error",
        max_bad_fraction: float = 0.01,
        verify: bool = False,
    ) -> None:
        if bad_images not in ("error", "skip"):
            raise ValueError(f"bad_images={bad_images!r}; expected 'error' or 'skip'")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder root {self.root} does not exist")
        self.split_dir = self.root / split
        files = _list_classes(self.split_dir)
        self.classes = sorted(files)
        if classes is not None and self.classes != list(classes):
            missing = sorted(set(classes) - set(self.classes))
            extra = sorted(set(self.classes) - set(classes))
            raise DataError(
                f"class folders of {self.split_dir} do not match the training classes: "
                f"missing {missing[:10]}, unexpected {extra[:10]}"
            )
        self.samples = [(p, i) for i, c in enumerate(self.classes) for p in files[c]]
        self.bad_images = bad_images
        self.max_bad_fraction = max_bad_fraction
        self.skipped: list[tuple[Path, str]] = []
        if bad_images == "skip" and verify:
            self._drop_unreadable(max_bad_fraction)

    def _drop_unreadable(self, max_bad_fraction: float) -> None:
        kept = []
        for path, label in self.samples:
            why = _unreadable(path)
            if why is None:
                kept.append((path, label))
            else:
                self.skipped.append((path, why))
        if self.skipped:
            listed = "\n  ".join(f"{p} ({why})" for p, why in self.skipped[:20])
            more = f"\n  ... and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            frac = len(self.skipped) / max(1, len(self.samples))
            if frac > max_bad_fraction or not kept:
                raise DataError(
                    f"{len(self.skipped)} of {len(self.samples)} images under {self.split_dir} are unreadable "
                    f"({frac:.2%} > max_bad_fraction={max_bad_fraction}):\n  {listed}{more}"
                )
            warnings.warn(
                f"skipping {len(self.skipped)} unreadable image(s) under {self.split_dir}:\n  {listed}{more}",
                stacklevel=2,
            )
        self.samples = kept

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[Any, int]:
        """Decode sample ``i`` to a Pillow RGB image (in ``"skip"`` mode, the next readable one if it fails)."""
        from PIL import Image

        for attempt in range(len(self.samples)):
            path, label = self.samples[(i + attempt) % len(self.samples)]
            try:
                with Image.open(path) as img:
                    return _to_rgb(img, path), label
            except Exception as e:
                if self.bad_images == "error":
                    raise DataError(
                        f"cannot decode image {path}: {type(e).__name__}: {e} "
                        "(use --data.bad_images skip to report and skip unreadable images)"
                    ) from e
                if all(p != path for p, _ in self.skipped):
                    self.skipped.append((path, f"{type(e).__name__}: {e}"))
                    warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}", stacklevel=2)
                if len(self.skipped) > self.max_bad_fraction * len(self.samples):
                    listed = ", ".join(str(p) for p, _ in self.skipped[:10])
                    raise DataError(
                        f"{len(self.skipped)} unreadable images under {self.split_dir} exceed "
                        f"max_bad_fraction={self.max_bad_fraction} of {len(self.samples)}: {listed}"
                    ) from e
        raise DataError(f"no readable image under {self.split_dir}")

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.load(i)


# ---------------------------------------------------------------- synthetic


def make_synthetic(
    num_samples: int, num_classes: int, image_size: int, in_chans: int = 3, seed: int = 0
) -> ArrayDataset:
    """Learnable random images: a fixed random pattern per class plus noise (for smoke tests and benchmarks)."""
    if num_samples < 1 or num_classes < 1 or image_size < 1:
        raise ValueError(
            f"synthetic data needs positive sizes, got num_samples={num_samples}, num_classes={num_classes}, "
            f"image_size={image_size}"
        )
    gen = torch.Generator().manual_seed(10_007)  # class patterns shared by every split
    patterns = torch.rand(num_classes, in_chans, image_size, image_size, generator=gen) * 255
    gen.manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=gen)
    noise = torch.randn(num_samples, in_chans, image_size, image_size, generator=gen) * 48
    images = (patterns[labels] * 0.6 + 50 + noise).clamp(0, 255).round().to(torch.uint8)
    return ArrayDataset(images, labels, [f"class_{i}" for i in range(num_classes)])


# ---------------------------------------------------------------- keyed transforms


class TransformDataset(Dataset):
    """Apply ``transform(sample, generator)`` to a dataset's samples.

    Keys are ints or ``(epoch, index)`` pairs (see :class:`lambdanet.data.loader.EpochSampler`); a random
    transform gets a generator seeded from ``(seed, epoch, index)``, so augmentation does not depend on workers,
    processes or where a run was resumed.
    """

    def __init__(
        self,
        base: Dataset,
        transform: Callable[[Any, torch.Generator | None], Tensor],
        seed: int = 0,
        random: bool = False,
    ) -> None:
        self.base, self.transform, self.seed, self.random = base, transform, seed, random

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        gen = None
        if self.random:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_000_007 + i)
        img, label = self.base[i]
        return self.transform(img, gen), label
