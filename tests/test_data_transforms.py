"""Tensor transforms and RandAugment: shapes, dtypes, determinism and identity at zero strength."""

from __future__ import annotations

import pytest
import torch

from lambdanet.data import transforms as T


def _img(c: int = 3, h: int = 12, w: int = 10) -> torch.Tensor:
    return torch.randint(0, 256, (c, h, w), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_random_crop_is_a_shifted_window() -> None:
    img = _img()
    out = T.random_crop(img, 8, 2, torch.Generator().manual_seed(0))
    assert out.shape == (3, 8, 8)
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
    hits = [
        (t, c)
        for t in range(padded.shape[1] - 7)
        for c in range(padded.shape[2] - 7)
        if torch.equal(padded[:, t : t + 8, c : c + 8], out)
    ]
    assert hits
    again = T.random_crop(img, 8, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="smaller than size=20"):
        T.random_crop(img, 20, 0, torch.Generator())


def test_hflip_and_normalize() -> None:
    img = _img()
    flips = {bool(torch.equal(T.hflip(img, torch.Generator().manual_seed(s)), img.flip(-1))) for s in range(20)}
    assert flips == {True, False}
    x = T.normalize(torch.full((2, 2, 2), 255, dtype=torch.uint8), (0.5, 0.0), (0.5, 2.0))
    assert torch.allclose(x[0], torch.ones(2, 2))
    assert torch.allclose(x[1], torch.full((2, 2), 0.5))


@pytest.mark.parametrize("op", sorted(T.RANDAUGMENT_OPS))
def test_randaugment_ops_keep_shape_and_are_identity_at_zero(op: str) -> None:
    img = _img()
    fn = T.RANDAUGMENT_OPS[op]
    strong = fn(img, 1.0, torch.Generator().manual_seed(0))
    assert strong.shape == img.shape
    assert strong.dtype == torch.uint8
    if op not in ("AutoContrast", "Equalize"):
        assert torch.equal(fn(img, 0.0, torch.Generator().manual_seed(0)), img)
    if op != "Identity":
        # some strong setting changes some random image
        changed = any(
            not torch.equal(fn(_img(h=9 + s), 1.0, torch.Generator().manual_seed(s)), _img(h=9 + s)) for s in range(4)
        )
        low_contrast = (_img(h=32, w=32) // 4 + 64).to(torch.uint8)  # equalize needs > 255 pixels per channel
        changed = changed or not torch.equal(fn(low_contrast, 1.0, torch.Generator()), low_contrast)
        assert changed, op


def test_translate_moves_content_and_fills_grey() -> None:
    img = torch.zeros(1, 8, 8, dtype=torch.uint8)
    img[0, :, 0] = 255
    out = T.RANDAUGMENT_OPS["TranslateX"](img, 0.25 / 0.45 / 2 * 2, torch.Generator().manual_seed(0))
    assert (out == 128).any()  # area uncovered by the shift is grey


def test_rand_augment_is_reproducible() -> None:
    img = _img(h=16, w=16)
    a = T.rand_augment(img, 2, 10, torch.Generator().manual_seed(3))
    b = T.rand_augment(img, 2, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="uint8"):
        T.rand_augment(img.float(), 2, 10, torch.Generator())


def test_pil_crops() -> None:
    from PIL import Image

    pil = Image.new("RGB", (40, 30), color=(10, 20, 30))
    out = T.pil_to_tensor(T.pil_random_resized_crop(pil, 16, torch.Generator().manual_seed(0)))
    assert out.shape == (3, 16, 16)
    assert out[:, 0, 0].tolist() == [10, 20, 30]
    center = T.pil_to_tensor(T.pil_resize_center_crop(pil, 16))
    assert center.shape == (3, 16, 16)
