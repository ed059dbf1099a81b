"""Pathfinder-style long-range task: do two dots lie on the same dashed curve?

After Linsley et al., "Learning long-range spatial dependencies with horizontal gated recurrent units" (NeurIPS
2018) and the Pathfinder task of Long Range Arena (Tay et al., ICLR 2021). Each grey-scale image holds two dots and
``distractors + 2`` dashed curves. Label 1: one curve joins the two dots (a dot at each of its ends). Label 0: the
dots sit at the ends of two different curves. The differences from the published generator are in
``docs/long_range.md``.

Construction (all integer arithmetic, so the bytes do not depend on the platform's float rounding):

- A curve is a walk of ``curve_length`` unit steps in one of 64 directions; each step turns by at most
  ``max_turn`` directions (a smooth contour). Positions are fixed point (1/256 pixel) and round to pixels with an
  integer shift, so consecutive pixels are 8-connected. Steps are drawn in dashes of ``dash`` steps separated by
  ``gap`` blank steps (random phase per curve).
- Curves never come closer than ``gap + 2`` pixels (Chebyshev) to another curve or dot, so following a curve
  across its gaps can never jump onto another one. Proposals that break this or leave the frame are rejected and
  redrawn; an image whose curves cannot be placed is drawn again from scratch.
- The dot distance does not give the label away: in a negative image the second dot is placed at the end of an
  undrawn walk from the first dot (the same distribution as the far end of a positive's curve), and a fresh curve
  is then grown from it.
- Labels are balanced exactly within every block of 1024 images; block ``j`` of a split is generated from the seed
  sequence ``(version, seed, split, j)``, so a split of ``n`` images is the first ``n`` images of any longer one.

Shape: images (n, 1, image_size, image_size) uint8 in {0, 255}; labels (n,) int64; dots (n, 2, 2) int16 (y, x).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DIFFICULTIES",
    "PathfinderSettings",
    "generate_pathfinder",
    "load_pathfinder",
    "pathfinder_settings",
]

GENERATOR_VERSION = 1
BLOCK = 1024  # images per independently seeded block
_DIRS = 64  # directions of the walk
_FP = 256  # fixed point: units per pixel
# Unit step per direction in fixed point. 256 cos/sin of k * 2pi / 64 lie at least 0.013 from a rounding tie, far
# beyond any libm's last-bit differences, so every platform gets the same integers (tests pin the table's checksum).
_STEP = np.stack(
    [
        np.rint(np.sin(2 * np.pi * np.arange(_DIRS) / _DIRS) * _FP),
        np.rint(np.cos(2 * np.pi * np.arange(_DIRS) / _DIRS) * _FP),
    ],
    axis=1,
).astype(np.int64)  # (direction, (dy, dx))
_SPLITS = {"train": 0, "val": 1, "test": 2}
_MAX_ROUNDS = 1000  # rounds of redrawing failed images (late rounds hold few images and cost little)
_PATIENCE = 3  # rounds that place no image at all before the settings count as too crowded


@dataclass(frozen=True)
class PathfinderSettings:
    """What one Pathfinder-style dataset looks like.

    Attributes:
        image_size: side of the square image (>= 16).
        curve_length: steps (about one pixel each) per curve; longer curves make the task longer-range.
        distractors: curves carrying no dot (a positive image has ``distractors + 1`` of them, a negative
            ``distractors``; both hold ``distractors + 2`` curves in all).
        dash: drawn steps per dash.
        gap: blank steps between dashes.
        max_turn: largest direction change per step, in 64ths of a full turn (curvature).
        tries: proposals per curve and round before the image is redrawn.
        seed: base seed of every split.
    """

    image_size: int = 32
    curve_length: int = 16
    distractors: int = 2
    dash: int = 3
    gap: int = 1
    max_turn: int = 2
    tries: int = 16
    seed: int = 0

    def validate(self) -> None:
        checks = {
            "image_size": self.image_size >= 16,
            "curve_length": 2 <= self.curve_length <= 4 * self.image_size,
            "distractors": self.distractors >= 0,
            "dash": self.dash >= 1,
            "gap": 0 <= self.gap <= 4,
            "max_turn": 0 <= self.max_turn <= _DIRS // 4,
            "tries": self.tries >= 1,
            "seed": self.seed >= 0,
        }
        expected = {
            "image_size": ">= 16",
            "curve_length": f"in [2, {4 * self.image_size}]",
            "distractors": ">= 0",
            "dash": ">= 1",
            "gap": "in [0, 4]",
            "max_turn": f"in [0, {_DIRS // 4}]",
            "tries": ">= 1",
            "seed": ">= 0",
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"pathfinder {key}={getattr(self, key)!r}; expected {expected[key]}")

    @property
    def dot_radius2(self) -> int:
        """Squared radius of a dot: a 3x3 square below 48 pixels, a 5x5 disk above."""
        return 2 if self.image_size < 48 else 5

    def key(self) -> str:
        """Stable hash of the settings and the generator version (names the cache folder)."""
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# (curve_length, distractors) at 32x32; lengths scale with the image side, the distractor count stays (more crowd
# the 64x64 frame so that most images must be redrawn; see docs/long_range.md).
DIFFICULTIES: dict[str, tuple[int, int]] = {"easy": (10, 1), "medium": (16, 2), "hard": (22, 2)}


def pathfinder_settings(
    difficulty: str = "medium",
    image_size: int = 32,
    curve_length: int | None = None,
    distractors: int | None = None,
    seed: int = 0,
) -> PathfinderSettings:
    """Settings of a named difficulty at ``image_size``, with optional explicit overrides."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"pathfinder_difficulty={difficulty!r}; expected one of {list(DIFFICULTIES)}")
    length, n_distract = DIFFICULTIES[difficulty]
    scale = image_size / 32
    settings = PathfinderSettings(
        image_size=image_size,
        curve_length=curve_length if curve_length is not None else max(2, round(length * scale)),
        distractors=distractors if distractors is not None else n_distract,
        seed=seed,
    )
    settings.validate()
    return settings


# ---------------------------------------------------------------- generation


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Chebyshev dilation by ``r`` pixels of a (m, s, s) bool mask (separable max filter)."""
    if r == 0:
        return mask.copy()
    s = mask.shape[-1]
    out = np.zeros_like(mask)
    padded = np.pad(mask, ((0, 0), (r, r), (0, 0)))
    for d in range(2 * r + 1):
        out |= padded[:, d : d + s]
    padded = np.pad(out, ((0, 0), (0, 0), (r, r)))
    out = np.zeros_like(mask)
    for d in range(2 * r + 1):
        out |= padded[:, :, d : d + s]
    return out


def _dot_offsets(r2: int) -> np.ndarray:
    ax = np.arange(-2, 3)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    keep = yy * yy + xx * xx <= r2
    return np.stack([yy[keep], xx[keep]], axis=1)  # (o, 2)


class _Walker:
    """Proposes curves for many images at once and keeps the first valid proposal of each."""

    def __init__(self, st: PathfinderSettings, rng: np.random.Generator) -> None:
        self.st, self.rng = st, rng
        self.lo = 1 if st.dot_radius2 <= 2 else 2  # a dot must fit inside the frame
        self.hi = st.image_size - 1 - self.lo

    def random_starts(self, m: int) -> np.ndarray:
        return self.rng.integers(self.lo, self.hi + 1, size=(m, 2))

    def walk(
        self, starts: np.ndarray | None, m: int, forbidden: np.ndarray | None, dot_ends: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``tries`` walks per image from ``starts`` (m, 2) (random if None); returns (ok (m,), pixels (m, L, 2)).

        A walk is valid if every pixel is inside the frame and none is ``forbidden`` (m, s, s). With ``dot_ends``
        1 (a dot at the start) or 2 (dots at both ends), the walk must also not come back near its own dot(s): past
        its first (before its last) ``2 * (zone + 1)`` steps it stays more than ``zone`` = dot radius + separation
        pixels away. Every curve then keeps the same distance from every dot, whichever dot it carries, so a
        curve folding back onto its own dot does not mark positives.
        """
        st, rng, t, n = self.st, self.rng, self.st.tries, self.st.curve_length
        if starts is None:
            start = rng.integers(self.lo, self.hi + 1, size=(m, t, 2))
        else:
            start = np.broadcast_to(starts[:, None, :], (m, t, 2))
        d0 = rng.integers(0, _DIRS, size=(m, t, 1))
        turns = rng.integers(-st.max_turn, st.max_turn + 1, size=(m, t, n - 1))
        dirs = (d0 + np.cumsum(turns, axis=-1)) % _DIRS
        fixed = start[:, :, None, :] * _FP + np.cumsum(_STEP[dirs], axis=2)
        pix = np.concatenate([start[:, :, None, :], (fixed + _FP // 2) >> 8], axis=2)  # (m, t, L, 2)
        ok = ((pix >= self.lo) & (pix <= self.hi)).all(axis=(2, 3))
        if forbidden is not None:
            clipped = np.clip(pix, 0, st.image_size - 1)
            rows = np.broadcast_to(np.arange(m)[:, None, None], pix.shape[:3])
            ok &= ~forbidden[rows, clipped[..., 0], clipped[..., 1]].any(axis=2)
        zone = self.lo + st.gap + 1
        skip = 2 * (zone + 1)
        if dot_ends >= 1 and n > skip:
            ok &= (np.abs(pix[:, :, skip:] - pix[:, :, :1]).max(-1) > zone).all(-1)
        if dot_ends >= 2 and n > skip:
            ok &= (np.abs(pix[:, :, : n - skip] - pix[:, :, -1:]).max(-1) > zone).all(-1)
        first = ok.argmax(axis=1)
        return ok.any(axis=1), pix[np.arange(m), first]

    def place(
        self,
        starts: np.ndarray | None,
        forbidden: np.ndarray | None,
        need: np.ndarray,
        dot_ends: int = 0,
        rounds: int = 12,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A valid walk for every image with ``need`` (m,), retrying the failed ones ``rounds`` times.

        Returns ok (m,) and pixels (m, L, 2) (zeros where not placed).
        """
        m = len(need)
        ok = np.zeros(m, bool)
        pix = np.zeros((m, self.st.curve_length, 2), np.int64)
        idx = np.flatnonzero(need)
        for _ in range(rounds):
            if not len(idx):
                break
            sub_ok, sub_pix = self.walk(
                None if starts is None else starts[idx],
                len(idx),
                None if forbidden is None else forbidden[idx],
                dot_ends,
            )
            ok[idx[sub_ok]] = True
            pix[idx[sub_ok]] = sub_pix[sub_ok]
            idx = idx[~sub_ok]
        return ok, pix


def _draw(occupied: np.ndarray, drawn: np.ndarray, pix: np.ndarray, on: np.ndarray, ok: np.ndarray) -> None:
    """Mark the walks ``pix`` (m, L, 2) of images ``ok`` as occupied, and their ``on`` (m, L) steps as drawn."""
    sel = np.flatnonzero(ok)
    p, keep = pix[sel], on[sel]
    rows = np.broadcast_to(sel[:, None], p.shape[:2])
    occupied[rows, p[..., 0], p[..., 1]] = True
    drawn[rows[keep], p[..., 0][keep], p[..., 1][keep]] = True


def _generate_block(st: PathfinderSettings, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """BLOCK images: (images (BLOCK, s, s) uint8, labels (BLOCK,), dots (BLOCK, 2, 2))."""
    s, n = st.image_size, BLOCK
    sep = st.gap + 1  # dilation radius: other curves stay >= gap + 2 pixels away
    dot_off = _dot_offsets(st.dot_radius2)
    period = st.dash + st.gap
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    images = np.zeros((n, s, s), np.uint8)
    dots = np.zeros((n, 2, 2), np.int16)
    todo = np.arange(n)
    walker = _Walker(st, rng)

    def dashes(m: int) -> np.ndarray:
        phase = rng.integers(0, period, size=(m, 1))
        return (np.arange(st.curve_length)[None, :] + phase) % period < st.dash

    def dot_pixels(yx: np.ndarray) -> np.ndarray:
        return yx[:, None, :] + dot_off[None]  # (m, o, 2)

    for rnd in range(_MAX_ROUNDS):
        if not len(todo) or (rnd >= _PATIENCE and len(todo) == n):
            break
        m = len(todo)
        pos = labels[todo] == 1
        occupied = np.zeros((m, s, s), bool)  # every pixel a walk visits (drawn or in a gap) and the dots
        drawn = np.zeros((m, s, s), bool)
        every = np.ones(m, bool)
        a = walker.random_starts(m)
        # the second dot: the end of a positive's curve, or of an undrawn walk of the same law (negatives)
        ok, first = walker.place(a, None, every, dot_ends=2)
        b = first[:, -1]
        alive = ok & (np.abs(a - b).max(axis=1) > sep + 2 * walker.lo)  # dots apart, whatever the label
        # negatives: the curve from A keeps away from B's dot
        b_dot = np.zeros((m, s, s), bool)
        _draw(b_dot, b_dot, dot_pixels(np.clip(b, walker.lo, walker.hi)), np.ones((m, len(dot_off)), bool), every)
        ok, neg_curve = walker.place(a, _dilate(b_dot, sep), alive & ~pos, dot_ends=1)
        alive &= pos | ok
        curve_a = np.where(pos[:, None, None], first, neg_curve)
        _draw(occupied, drawn, curve_a, dashes(m), alive)
        _draw(occupied, drawn, dot_pixels(a), np.ones((m, len(dot_off)), bool), alive)
        # negatives: a fresh curve grown from B, away from A's curve and dot
        ok, curve_b = walker.place(b, _dilate(occupied, sep), alive & ~pos, dot_ends=1)
        alive &= pos | ok
        _draw(occupied, drawn, curve_b, dashes(m), alive & ~pos)
        _draw(occupied, drawn, dot_pixels(b), np.ones((m, len(dot_off)), bool), alive)
        for k in range(st.distractors + 1):
            need = alive & (pos | (k < st.distractors))  # a positive has one distractor more
            ok, curve = walker.place(None, _dilate(occupied, sep), need)
            alive &= ~need | ok
            _draw(occupied, drawn, curve, dashes(m), alive & need)
        done = todo[alive]
        images[done] = np.where(drawn[alive], 255, 0).astype(np.uint8)
        dots[done, 0] = a[alive]
        dots[done, 1] = b[alive]
        todo = todo[~alive]
    if len(todo):
        raise ValueError(
            f"pathfinder settings {st} are too crowded: {len(todo)} of {n} images could not be placed; use fewer "
            "distractors, shorter curves or a larger image_size"
        )
    return images, labels, dots


def generate_pathfinder(
    settings: PathfinderSettings, num_samples: int, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``num_samples`` images of ``split`` (deterministic: same settings, same bytes).

    Returns:
        images (n, 1, s, s) uint8, labels (n,) int64, dots (n, 2, 2) int16 (the two dots' (y, x)).
    """
    settings.validate()
    if split not in _SPLITS:
        raise ValueError(f"split={split!r}; expected one of {list(_SPLITS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    parts = []
    for j in range(-(-num_samples // BLOCK)):
        rng = np.random.default_rng([GENERATOR_VERSION, settings.seed, _SPLITS[split], j])
        parts.append(_generate_block(settings, rng))
    images, labels, dots = (np.concatenate(p)[:num_samples] for p in zip(*parts, strict=True))
    return images[:, None], labels, dots


# ---------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir(root: str | os.PathLike[str], settings: PathfinderSettings, counts: dict[str, int]) -> Path:
    """``<root>/pathfinder/<size>px-<hash>``: the hash covers the settings, the split sizes and the version."""
    blob = json.dumps({"settings": settings.key(), "counts": counts}, sort_keys=True).encode()
    return Path(root) / "pathfinder" / f"{settings.image_size}px-{hashlib.sha256(blob).hexdigest()[:16]}"


def _check_cache(folder: Path, settings: PathfinderSettings, counts: dict[str, int]) -> str | None:
    """Why the cache in ``folder`` cannot be used, or None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        return f"no readable manifest.json ({type(e).__name__})"
    if manifest.get("settings") != asdict(settings) or manifest.get("counts") != counts:
        return "manifest settings or counts differ"
    if manifest.get("version") != GENERATOR_VERSION:
        return "generated by another generator version"
    for name, digest in manifest.get("sha256", {}).items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            return f"{name} is missing or its sha256 differs from the manifest"
    if len(manifest.get("sha256", {})) != 3 * len(counts):
        return "manifest lists the wrong files"
    return None


def load_pathfinder(
    root: str | os.PathLike[str], settings: PathfinderSettings, counts: dict[str, int]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The splits ``counts`` (e.g. ``{"train": 20000, "val": 2000, "test": 2000}``) from the cache under ``root``.

    The cache is (re)generated when it is missing or corrupt (a file missing, or its sha256 not the one in
    ``manifest.json``), with a warning in the second case. Writes go to a temporary folder renamed into place.

    Returns:
        split -> (images (n, 1, s, s) uint8, labels (n,) int64, dots (n, 2, 2) int16).
    """
    settings.validate()
    bad = {k: v for k, v in counts.items() if k not in _SPLITS or v < 1}
    if bad:
        raise ValueError(f"pathfinder counts={counts!r}; expected sizes >= 1 for splits among {list(_SPLITS)}")
    folder = cache_dir(root, settings, counts)
    why = _check_cache(folder, settings, counts) if folder.exists() else "missing"
    if why is not None:
        if why != "missing":
            warnings.warn(f"regenerating the pathfinder cache {folder}: {why}", stacklevel=2)
        _write_cache(folder, settings, counts)
    out = {}
    for split in counts:
        arrays = [np.load(folder / f"{split}_{kind}.npy", allow_pickle=False) for kind in ("images", "labels", "dots")]
        out[split] = (arrays[0], arrays[1], arrays[2])
    return out


def _write_cache(folder: Path, settings: PathfinderSettings, counts: dict[str, int]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    start = time.perf_counter()
    digests = {}
    for split, n in counts.items():
        for kind, arr in zip(("images", "labels", "dots"), generate_pathfinder(settings, n, split), strict=True):
            path = tmp / f"{split}_{kind}.npy"
            np.save(path, arr, allow_pickle=False)
            digests[path.name] = _sha256(path)
    manifest = {
        "version": GENERATOR_VERSION,
        "settings": asdict(settings),
        "counts": counts,
        "positives": {split: int(np.load(tmp / f"{split}_labels.npy").sum()) for split in counts},
        "sha256": digests,
        "seconds": round(time.perf_counter() - start, 3),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def settings_for(cfg: Any) -> PathfinderSettings:
    """The settings of a :class:`~lambdanet.data.loader.DataConfig` (``data.pathfinder_*``, ``data.image_size``)."""
    return pathfinder_settings(cfg.pathfinder_difficulty, cfg.size, cfg.pathfinder_length, cfg.pathfinder_distractors)


def splits_for(cfg: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The train/val/test splits a :class:`~lambdanet.data.loader.DataConfig` asks for (cached under its root)."""
    settings = settings_for(cfg)
    n = cfg.generated_samples
    counts = {"train": n, "val": max(1, n // 10), "test": max(1, n // 10)}
    return load_pathfinder(cfg.root or "data", settings, counts)
