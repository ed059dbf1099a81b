"""Moving digits: determinism, layout, bouncing against a step-by-step float reference, labels and the plumbing."""

from __future__ import annotations

import numpy as np
import pytest

from lambdanet.data import video as V
from lambdanet.data.loader import DataConfig, build_splits, data_info


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    st = V.MovingDigitsSettings(frames=10)
    a, la = V.generate_moving_digits(st, 1030)  # crosses a block boundary
    b, lb = V.generate_moving_digits(st, 1030)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert a.shape == (1030, 1, 10, 32, 32) and a.dtype == np.uint8 and la.dtype == np.int64
    short, _ = V.generate_moving_digits(st, 20)
    assert np.array_equal(short, a[:20])
    other, _ = V.generate_moving_digits(V.MovingDigitsSettings(frames=10, seed=1), 20)
    assert not np.array_equal(other, short)
    test, _ = V.generate_moving_digits(st, 20, "test")
    assert not np.array_equal(test, short)


def _reference_bounce(p0: float, v: float, frames: int, span: float) -> list[int]:
    """Move one step at a time and reflect off the walls 0 and ``span`` (float64, obviously correct)."""
    out, p = [], p0
    for _ in range(frames):
        out.append(int(np.floor(p + 0.5)))
        p += v
        while p < 0 or p > span:  # reflect the position and reverse the velocity
            p, v = (-p if p < 0 else 2 * span - p), -v
    return out


def test_bounce_matches_a_step_by_step_reference() -> None:
    rng = np.random.default_rng(0)
    span = 24
    p0 = rng.integers(0, span * 256, size=200, endpoint=True)
    v = rng.integers(-640, 641, size=200)
    got = V._bounce(p0, v, 16, span)
    for i in range(200):
        assert got[i].tolist() == _reference_bounce(p0[i] / 256, v[i] / 256, 16, span), i
    assert got.min() >= 0 and got.max() <= span


def test_digits_move_and_the_faster_one_names_the_label() -> None:
    st = V.MovingDigitsSettings(frames=12, seed=3)
    clips, faster = V.generate_moving_digits(st, 256)
    _, total = V.generate_moving_digits(V.MovingDigitsSettings(frames=12, seed=3, label="sum"), 256)
    # same clips whatever the label; the other digit's class is then (sum - faster) mod 10, never the faster's
    other = (total - faster) % 10
    assert (other != faster).all()
    assert np.bincount(faster, minlength=10).min() > 10  # every class appears
    # ink is conserved up to overlaps; frames change (the digits move) but never go blank
    ink = (clips > 0).sum(axis=(1, 3, 4))
    assert (ink > 0).all()
    assert (np.abs(np.diff(clips.astype(int), axis=2)).sum(axis=(1, 3, 4)) > 0).mean() > 0.95


def test_every_frame_holds_at_most_two_digits() -> None:
    st = V.MovingDigitsSettings(frames=8)
    images, classes = V._digit_pool("train", 1)
    clips, _ = V._block(st, (images, classes), np.random.default_rng(5))
    for i in range(40):
        for t in range(8):
            frame = clips[i, t]
            assert np.count_nonzero(frame) <= 2 * 64  # the ink of two 8x8 digits, never more
            assert frame.max() > 0


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"frames=1; expected 2 to 64"):
        V.MovingDigitsSettings(frames=1).validate()
    with pytest.raises(ValueError, match=r"label='count'"):
        DataConfig(name="moving_digits", video_label="count").validate()
    with pytest.raises(ValueError, match=r"digit_scale=4"):
        V.MovingDigitsSettings(digit_scale=4).validate()


def test_dataset_plumbing() -> None:
    cfg = DataConfig(name="moving_digits", generated_samples=30, video_frames=10)
    info = data_info(cfg)
    assert (info.num_classes, info.in_chans, info.image_size) == (10, 1, 32)
    splits = build_splits(cfg, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 3, 3)
    x, y = splits.train[(0, 2)]
    assert x.shape == (1, 10, 32, 32) and x.dtype.is_floating_point and 0 <= y < 10
    clips, labels = V.generate_moving_digits(V.settings_for(cfg), 30)
    assert y == labels[2]
    assert np.allclose(x.numpy() * 0.166 + 0.037, clips[2] / 255, atol=1e-5)


def test_golden_bytes() -> None:
    """Pins the bytes: a change of the generator (or of numpy's random stream) must bump GENERATOR_VERSION."""
    import hashlib

    clips, labels = V.generate_moving_digits(V.MovingDigitsSettings(), 64)
    assert hashlib.sha256(clips.tobytes() + labels.tobytes()).hexdigest()[:16] == "6896866d61c1f5a7"
