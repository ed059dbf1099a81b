"""Moving digits: two of scikit-learn's 8x8 handwritten digits bouncing around a frame, for space-time networks.

In the spirit of Moving MNIST (Srivastava et al., ICML 2015), built from the digits bundled with scikit-learn so
that nothing is downloaded. Each clip holds two digits of different classes. Each moves in a straight line at a
constant speed and bounces off the frame's edges: one is slow (0.5 to 1 pixel per frame), the other fast (1.75 to
2.5 pixels per frame). Overlapping digits combine by their pixel maximum.

Labels (``label``):

- ``"faster"`` (default): the class of the faster digit. One frame shows two candidate digits but not which one
  moves faster, so a model that ignores motion is capped near 50% (it can only guess between the two); appearance
  and motion are both needed.
- ``"sum"``: (first digit + second digit) mod 10, which needs both digits but no motion.

Everything is integer arithmetic (positions in 1/256 pixel, bounces by reflection), so the bytes depend only on
the settings and the seed. Clip ``j`` of a split comes from the seed sequence ``(version, seed, split, block)``
with blocks of 1024 clips, and the digits of the train, val and test splits come from the fixed digits split of
:func:`~lambdanet.data.datasets.load_digits`, so test clips show digit images never seen in training.

Shape: videos (n, 1, frames, image_size, image_size) uint8 (C, T, H, W per clip); labels (n,) int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lambdanet.data.pathfinder import _FP, _STEP  # fixed point (1/256 pixel) and the shared direction table

__all__ = ["MovingDigitsSettings", "generate_moving_digits"]

GENERATOR_VERSION = 1
BLOCK = 1024
_SPLITS = {"train": 0, "val": 1, "test": 2}
_DIRS = len(_STEP)
_SLOW = (128, 256)  # speed range in 1/256 pixel per frame
_FAST = (448, 640)
LABELS = ("faster", "sum")


@dataclass(frozen=True)
class MovingDigitsSettings:
    """What one moving-digits dataset looks like.

    Attributes:
        frames: clip length T (2 to 64; 10 to 16 is the intended range).
        image_size: side of the square frame.
        digit_scale: integer upscaling of the 8x8 digits (nearest neighbour): 1 gives 8x8, 2 gives 16x16.
        label: ``"faster"`` or ``"sum"`` (see the module docstring).
        seed: base seed of every split.
    """

    frames: int = 12
    image_size: int = 32
    digit_scale: int = 1
    label: str = "faster"
    seed: int = 0

    def validate(self) -> None:
        if not 2 <= self.frames <= 64:
            raise ValueError(f"moving digits frames={self.frames!r}; expected 2 to 64")
        if self.digit_scale < 1 or 8 * self.digit_scale >= self.image_size:
            raise ValueError(
                f"moving digits digit_scale={self.digit_scale!r}; expected >= 1 with 8 * digit_scale < image_size "
                f"({self.image_size})"
            )
        if self.label not in LABELS:
            raise ValueError(f"moving digits label={self.label!r}; expected one of {list(LABELS)}")
        if self.seed < 0:
            raise ValueError(f"moving digits seed={self.seed!r}; expected >= 0")


def _digit_pool(split: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit images of ``split`` of the fixed digits split, sorted by class: (n, 8s, 8s) uint8 and (n,) labels."""
    from lambdanet.data.datasets import load_digits

    ds = load_digits()[_SPLITS[split]]
    images = ds.images[:, 0].numpy()
    labels = ds.labels.numpy()
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return images, labels


def _bounce(p0: np.ndarray, v: np.ndarray, frames: int, span: int) -> np.ndarray:
    """Pixel positions (m, T) of a point from ``p0`` (fixed point) at velocity ``v``, reflected in [0, span]."""
    period = 2 * span * _FP
    raw = (p0[:, None] + v[:, None] * np.arange(frames)[None, :]) % period
    folded = np.where(raw > span * _FP, period - raw, raw)
    return np.minimum((folded + _FP // 2) >> 8, span)


def _block(st: MovingDigitsSettings, pool: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> tuple[Any, ...]:
    images, classes = pool
    m, s, t = BLOCK, st.image_size, st.frames
    d = images.shape[-1]
    span = s - d
    starts = np.searchsorted(classes, np.arange(10))
    counts = np.bincount(classes, minlength=10)
    c1 = rng.integers(0, 10, size=m)
    c2 = (c1 + rng.integers(1, 10, size=m)) % 10  # a different class
    digit = np.stack([starts[c] + rng.integers(0, counts[c]) for c in (c1, c2)])  # (2, m)
    fast = rng.integers(0, 2, size=m)  # which of the two is fast
    speed = np.stack([rng.integers(*_SLOW, size=m, endpoint=True), rng.integers(*_FAST, size=m, endpoint=True)])
    direction = rng.integers(0, _DIRS, size=(2, m))
    p0 = rng.integers(0, span * _FP, size=(2, m, 2), endpoint=True)
    clips = np.zeros((m, t, s, s), np.uint8)
    rows = np.arange(m)[:, None, None, None]
    frame = np.arange(t)[None, :, None, None]
    offsets = np.arange(d)
    for k in range(2):
        spd = np.where(fast == k, speed[1], speed[0])
        vel = _STEP[direction[k]] * spd[:, None] // _FP  # (m, 2) fixed point per frame
        y = _bounce(p0[k, :, 0], vel[:, 0], t, span)
        x = _bounce(p0[k, :, 1], vel[:, 1], t, span)
        yy = (y[:, :, None] + offsets)[:, :, :, None]
        xx = (x[:, :, None] + offsets)[:, :, None, :]
        patch = images[digit[k]][:, None]  # (m, 1, d, d)
        clips[rows, frame, yy, xx] = np.maximum(clips[rows, frame, yy, xx], patch)
    if st.label == "faster":
        labels = np.where(fast == 0, classes[digit[0]], classes[digit[1]])
    else:
        labels = (classes[digit[0]] + classes[digit[1]]) % 10
    return clips, labels.astype(np.int64)


def generate_moving_digits(settings: MovingDigitsSettings, num_samples: int, split: str = "train") -> tuple[Any, ...]:
    """``num_samples`` clips of ``split`` (deterministic: same settings, same bytes).

    Returns:
        videos (n, 1, frames, image_size, image_size) uint8 and labels (n,) int64.
    """
    settings.validate()
    if split not in _SPLITS:
        raise ValueError(f"split={split!r}; expected one of {list(_SPLITS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    pool = _digit_pool(split, settings.digit_scale)
    parts = [
        _block(settings, pool, np.random.default_rng([GENERATOR_VERSION, settings.seed, _SPLITS[split], j]))
        for j in range(-(-num_samples // BLOCK))
    ]
    videos = np.concatenate([p[0] for p in parts])[:num_samples]
    labels = np.concatenate([p[1] for p in parts])[:num_samples]
    return videos[:, None], labels


def settings_for(cfg: Any) -> MovingDigitsSettings:
    """The settings of a :class:`~lambdanet.data.loader.DataConfig` (``data.video_*``, ``data.image_size``)."""
    settings = MovingDigitsSettings(frames=cfg.video_frames, image_size=cfg.size, label=cfg.video_label)
    settings.validate()
    return settings


def splits_for(cfg: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The train/val/test splits a :class:`~lambdanet.data.loader.DataConfig` asks for (generated in memory)."""
    settings = settings_for(cfg)
    n = cfg.generated_samples
    counts = {"train": n, "val": max(1, n // 10), "test": max(1, n // 10)}
    return {split: generate_moving_digits(settings, k, split) for split, k in counts.items()}
