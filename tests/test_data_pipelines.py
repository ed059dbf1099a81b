"""The array-data pipelines against a float64 reference: evaluation normalises, training crops a window of the
zero-padded image and mirrors it about half the time, and the augmentation follows the (seed, epoch, index) key."""

from __future__ import annotations

import torch

from lambdanet.data.loader import DATASETS, DataConfig, build_splits


def _windows(img: torch.Tensor, padding: int, mean: float, std: float) -> list[torch.Tensor]:
    """Every ``side`` x ``side`` window of ``img`` zero-padded by ``padding``, and its mirror, normalised in float64."""
    side = img.shape[-1]
    padded = torch.nn.functional.pad(img.double(), (padding,) * 4)
    x = (padded / 255 - mean) / std
    out = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            window = x[..., top : top + side, left : left + side]
            out += [window, window.flip(-1)]
    return out


def test_array_training_pipeline_crops_and_mirrors_evaluation_only_normalises() -> None:
    spec = DATASETS["digits"]
    mean, std = spec.mean[0], spec.std[0]
    splits = build_splits(DataConfig(name="digits", crop_padding=2, hflip=True), seed=3)
    mirrored = shifted = 0
    for i in range(40):
        got = splits.train[(1, i)][0]
        windows = _windows(splits.train.base.images[i], 2, mean, std)
        matches = {k for k, w in enumerate(windows) if torch.allclose(got.double(), w, atol=1e-6)}
        assert matches, i  # a window of the zero-padded image, mirrored or not
        mirrored += all(k % 2 for k in matches)
        shifted += all(k // 2 != 12 for k in matches)  # window 12 is the unshifted one (top = left = padding)
        assert torch.equal(splits.train[(1, i)][0], got)  # the same key gives the same augmentation
    assert 5 < mirrored < 35 and shifted > 5
    raw = splits.val.base.images[5].double()
    torch.testing.assert_close(splits.val[5][0].double(), (raw / 255 - mean) / std, rtol=0, atol=1e-6)
    no_augmentation = build_splits(DataConfig(name="digits"), seed=3).train
    raw = no_augmentation.base.images[5].double()
    torch.testing.assert_close(no_augmentation[(1, 5)][0].double(), (raw / 255 - mean) / std, rtol=0, atol=1e-6)
