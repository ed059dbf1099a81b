"""Image transforms on uint8 tensors (and Pillow for the decode-side crops), without torchvision.

Every random transform takes an explicit ``torch.Generator`` so that a sample's augmentation depends only on
(seed, epoch, index): runs resumed from a checkpoint, or split over workers and processes, see the same images.

Shapes: images are (c, hh, ww) uint8 tensors unless stated otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RANDAUGMENT_OPS",
    "EvalTransform",
    "center_crop",
    "hflip",
    "normalize",
    "pil_random_resized_crop",
    "pil_resize_center_crop",
    "pil_to_tensor",
    "rand_augment",
    "random_crop",
]


def _uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def random_crop(img: Tensor, size: int, padding: int, gen: torch.Generator, fill: int = 0) -> Tensor:
    """Pad every side by ``padding`` (constant ``fill``) and cut a random ``size`` x ``size`` window (CIFAR's crop)."""
    if padding:
        img = F.pad(img, (padding, padding, padding, padding), value=fill)
    hh, ww = img.shape[-2:]
    if hh < size or ww < size:
        raise ValueError(f"random_crop: image {hh}x{ww} (after padding={padding}) is smaller than size={size}")
    top = int(torch.randint(0, hh - size + 1, (), generator=gen))
    left = int(torch.randint(0, ww - size + 1, (), generator=gen))
    return img[..., top : top + size, left : left + size]


def hflip(img: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror left-right with probability ``p``."""
    return img.flip(-1) if _uniform(gen) < p else img


def center_crop(img: Tensor, size: int) -> Tensor:
    """Cut the central ``size`` x ``size`` window."""
    hh, ww = img.shape[-2:]
    top, left = max(0, (hh - size) // 2), max(0, (ww - size) // 2)
    return img[..., top : top + size, left : left + size]


def normalize(img: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (c, hh, ww) -> float32 ``(img / 255 - mean) / std``."""
    x = img.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------- Pillow side (ImageNet-style folders)


def pil_to_tensor(img: object) -> Tensor:
    """A Pillow RGB image -> uint8 tensor (3, hh, ww)."""
    import numpy as np

    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def pil_random_resized_crop(
    img: object,
    size: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> object:
    """Inception-style crop: a random area fraction in ``scale`` and aspect ratio in ``ratio``, resized to ``size``."""
    from PIL import Image

    width, height = img.size  # type: ignore[attr-defined]
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            break
    else:  # fall back to a central crop with the ratio clamped, as torchvision does
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))  # type: ignore[attr-defined]


def pil_resize_center_crop(img: object, size: int, crop_pct: float = 0.875) -> object:
    """Resize the shorter side to ``size / crop_pct``, then cut the central ``size`` x ``size`` window."""
    from PIL import Image

    width, height = img.size  # type: ignore[attr-defined]
    short = round(size / crop_pct)
    if width <= height:
        new_w, new_h = short, max(short, round(height * short / width))
    else:
        new_w, new_h = max(short, round(width * short / height)), short
    img = img.resize((new_w, new_h), Image.BILINEAR)  # type: ignore[attr-defined]
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation preprocessing of a trained model, for one image: a path or Pillow image -> float32 (c, h, w).

    Converts to greyscale (1 channel) or RGB (3), resizes, then normalises with ``mean`` and ``std`` (0..1 scale).
    ``crop_pct=None`` resizes the whole image to (h, w) (array datasets: digits, CIFAR); otherwise the shorter side
    goes to ``h / crop_pct`` and the central h x w window is kept (image folders, e.g. ImageNet's 256 -> 224).
    On images of the training size this is the evaluation pipeline of ``lambdanet train``.

    Attributes:
        input_size: (channels, height, width) the model takes.
        mean: per-channel mean (or one value for all channels).
        std: per-channel standard deviation (or one value).
        crop_pct: centre-crop fraction, or None for a plain resize.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or self.input_size[0] not in (1, 3) or min(self.input_size) < 1:
            raise ValueError(f"input_size={self.input_size!r}; expected (channels, height, width) with 1 or 3 channels")
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, self.input_size[0]):
                raise ValueError(f"{key}={getattr(self, key)!r}; expected 1 or {self.input_size[0]} values")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct={self.crop_pct!r}; expected None or a fraction in (0, 1]")

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> EvalTransform:
        """From checkpoint metadata (``input_size``, ``mean``, ``std``, ``crop_pct``).

        Raises:
            ValueError: a key is missing (the message names it).
        """
        missing = [k for k in ("input_size", "mean", "std") if meta.get(k) is None]
        if missing:
            raise ValueError(f"the weights' metadata lacks {missing}: cannot build their evaluation transform")
        size = tuple(int(v) for v in meta["input_size"])
        crop = meta.get("crop_pct")
        return cls(size, tuple(map(float, meta["mean"])), tuple(map(float, meta["std"])), crop)  # type: ignore[arg-type]

    def __call__(self, image: str | os.PathLike[str] | Any) -> Tensor:
        from PIL import Image

        if isinstance(image, str | os.PathLike):
            try:
                with Image.open(image) as opened:
                    opened.load()
                    image = opened.copy()
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise ValueError(f"image {str(image)!r} cannot be read: {type(e).__name__}: {e}") from e
        c, h, w = self.input_size
        img = image.convert("L" if c == 1 else "RGB")
        if self.crop_pct is None:
            if img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
        elif h == w:
            img = pil_resize_center_crop(img, h, self.crop_pct)
        else:
            raise ValueError(f"crop_pct={self.crop_pct} needs a square input_size, got {self.input_size}")
        return normalize(pil_to_tensor(img), self.mean, self.std)


# ---------------------------------------------------------------- RandAugment (Cubuk et al., 2020)

_FILL = 128  # grey fill for geometric ops, as in the TF reference implementation
_MAX_LEVEL = 10.0  # magnitudes are on the TF scale: level / 10 is the op's full strength (15 goes beyond it)


def _blend(img: Tensor, other: Tensor, factor: float) -> Tensor:
    return (other.float() + factor * (img.float() - other.float())).round_().clamp_(0, 255).to(torch.uint8)


def _gray(img: Tensor) -> Tensor:
    if img.shape[0] == 1:
        return img.float()
    r, g, b = img.float().unbind(0)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(0)


def _affine(img: Tensor, matrix: list[list[float]]) -> Tensor:
    """Apply a 2x3 affine map (normalised coordinates, output -> input) with nearest sampling and grey fill."""
    theta = torch.tensor([matrix], dtype=torch.float32)
    x = img.float().unsqueeze(0) + 1.0  # shift so that zero marks "outside" after sampling
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    out = torch.where(out == 0, torch.full_like(out, _FILL + 1.0), out) - 1.0
    return out.clamp_(0, 255).to(torch.uint8)


def _signed(level: float, gen: torch.Generator) -> float:
    return -level if _uniform(gen) < 0.5 else level


def _autocontrast(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    x = img.float()
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return ((x - lo) * scale).round_().clamp_(0, 255).to(torch.uint8)


def _equalize(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    out = []
    for ch in img:
        hist = torch.bincount(ch.flatten().long(), minlength=256)
        nonzero = hist[hist > 0]
        step = (nonzero.sum() - nonzero[-1]) // 255 if nonzero.numel() else 0
        if int(step) == 0:
            out.append(ch)
            continue
        lut = ((torch.cumsum(hist, 0) + step // 2) // step).clamp_(0, 255)
        lut = torch.cat([torch.zeros(1, dtype=lut.dtype), lut[:-1]])
        out.append(lut[ch.long()].to(torch.uint8))
    return torch.stack(out)


def _rotate(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    angle = math.radians(_signed(level * 30.0, gen))
    hh, ww = img.shape[-2:]
    c, s = math.cos(angle), math.sin(angle)
    return _affine(img, [[c, -s * hh / ww, 0.0], [s * ww / hh, c, 0.0]])


def _solarize(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    threshold = 256 - int(level * 256)
    return torch.where(img.int() >= threshold, 255 - img, img)  # int: 256 would wrap around in uint8


def _posterize(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    bits = max(1, 8 - int(level * 4))
    mask = (0xFF << (8 - bits)) & 0xFF
    return img & mask


def _color(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    return _blend(img, _gray(img).expand_as(img), 1.0 + _signed(level * 0.9, gen))


def _contrast(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    mean = _gray(img).mean()
    return _blend(img, torch.full_like(img, 0, dtype=torch.float32) + mean, 1.0 + _signed(level * 0.9, gen))


def _brightness(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    return _blend(img, torch.zeros_like(img), 1.0 + _signed(level * 0.9, gen))


def _sharpness(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    c = img.shape[0]
    blurred = F.conv2d(img.float().unsqueeze(0), kernel.expand(c, 1, 3, 3), padding=1, groups=c)[0]
    smooth = img.float().clone()
    smooth[:, 1:-1, 1:-1] = blurred[:, 1:-1, 1:-1]  # borders stay untouched, as in PIL
    return _blend(img, smooth, 1.0 + _signed(level * 0.9, gen))


def _shear_x(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    hh, ww = img.shape[-2:]
    return _affine(img, [[1.0, _signed(level * 0.3, gen) * hh / ww, 0.0], [0.0, 1.0, 0.0]])


def _shear_y(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    hh, ww = img.shape[-2:]
    return _affine(img, [[1.0, 0.0, 0.0], [_signed(level * 0.3, gen) * ww / hh, 1.0, 0.0]])


def _translate_x(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    # TF translates by up to 100 px at 224 px (0.45 of the side); normalised coordinates span 2.
    return _affine(img, [[1.0, 0.0, _signed(level * 0.45 * 2, gen)], [0.0, 1.0, 0.0]])


def _translate_y(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    return _affine(img, [[1.0, 0.0, 0.0], [0.0, 1.0, _signed(level * 0.45 * 2, gen)]])


def _identity(img: Tensor, level: float, gen: torch.Generator) -> Tensor:
    return img


RANDAUGMENT_OPS: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "Identity": _identity,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Rotate": _rotate,
    "Solarize": _solarize,
    "Color": _color,
    "Posterize": _posterize,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}


def rand_augment(img: Tensor, num_layers: int, magnitude: float, gen: torch.Generator) -> Tensor:
    """RandAugment: apply ``num_layers`` ops drawn uniformly (with replacement) from :data:`RANDAUGMENT_OPS`.

    Args:
        img: uint8 image (c, hh, ww).
        num_layers: ops per image (the paper's 350-epoch recipe uses 2).
        magnitude: strength on the TF scale, where 10 is an op's full strength (the paper uses 10 and 15).
        gen: random generator.

    Returns:
        The augmented uint8 image.
    """
    if img.dtype != torch.uint8:
        raise ValueError(f"rand_augment expects a uint8 image, got dtype={img.dtype}")
    names = list(RANDAUGMENT_OPS)
    level = magnitude / _MAX_LEVEL
    for _ in range(num_layers):
        op = names[int(torch.randint(0, len(names), (), generator=gen))]
        img = RANDAUGMENT_OPS[op](img, level, gen)
    return img
