"""Datasets: digits split, CIFAR archives written in the official format, image folders, synthetic data."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lambdanet.data import datasets as D
from lambdanet.data.datasets import DataError, ImageFolderDataset, load_cifar, load_digits, make_synthetic
from lambdanet.data.loader import DataConfig, EpochSampler, build_splits, data_info


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar(
    root: Path, name: str = "cifar10", per_batch: int = 4, extract: bool = False, mark_verified: bool = True
) -> Path:
    """Write a small archive in the official python format (pickled dicts of bytes keys) and return its path.

    ``mark_verified`` writes the marker a successful official-MD5 check leaves beside an archive (size and mtime),
    so that this test archive is accepted as an already verified download.
    """
    spec = D.CIFAR_ARCHIVES[name]
    members: dict[str, bytes] = {}
    k = spec.num_classes
    for i, member in enumerate((*spec.train, spec.test)):
        data = _cifar_images(per_batch, i)
        labels = [(i + j) % k for j in range(per_batch)]
        batch = {b"data": data, spec.label_key: labels, b"batch_label": member.encode()}
        members[member] = pickle.dumps(batch)
    members[spec.meta] = pickle.dumps({spec.names_key: [f"c{j}".encode() for j in range(k)]})
    root.mkdir(parents=True, exist_ok=True)
    if extract:
        folder = root / spec.folder
        folder.mkdir()
        for member, blob in members.items():
            (folder / member).write_bytes(blob)
        return folder
    path = root / spec.filename
    with tarfile.open(path, "w:gz") as tar:
        for member, blob in members.items():
            info = tarfile.TarInfo(f"{spec.folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    if mark_verified:
        stat = path.stat()
        key = {"md5": spec.md5, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        path.with_name(path.name + ".md5-ok").write_text(json.dumps(key))
    return path


def trust(monkeypatch: pytest.MonkeyPatch, name: str, path: Path) -> None:
    """Make ``path`` the "official" archive of ``name`` (the real MD5s belong to the real archives)."""
    spec = dataclasses.replace(D.CIFAR_ARCHIVES[name], md5=hashlib.md5(path.read_bytes()).hexdigest())
    monkeypatch.setitem(D.CIFAR_ARCHIVES, name, spec)


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    train, val, test = load_digits(0.2, 0.1)
    assert (len(train), len(val), len(test)) == (1293, 144, 360)
    assert train.images.shape[1:] == (1, 8, 8)
    assert train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255
    # stratified: every class is represented in each split in proportion (within one image)
    for split in (train, val, test):
        counts = torch.bincount(split.labels, minlength=10).float()
        assert (counts / counts.sum() - 0.1).abs().max() < 0.02
    # the three splits partition the 1797 images
    from sklearn.datasets import load_digits as sk_digits

    def rows(*splits: D.ArrayDataset) -> list[tuple[int, ...]]:
        return sorted(
            (*tuple(x.flatten().tolist()), int(y)) for s in splits for x, y in zip(s.images, s.labels, strict=False)
        )

    full = sk_digits()
    everything = D.ArrayDataset(
        torch.from_numpy((full.images * (255.0 / 16.0)).round()).to(torch.uint8).unsqueeze(1),
        torch.from_numpy(full.target).long(),
        [],
    )
    assert rows(train, val, test) == rows(everything)
    again = load_digits(0.2, 0.1)[2]
    assert torch.equal(again.images, test.images)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("extract", [False, True])
def test_cifar_archive_round_trip(tmp_path: Path, name: str, extract: bool) -> None:
    path = write_cifar(tmp_path, name, per_batch=4, extract=extract)
    spec = D.CIFAR_ARCHIVES[name]
    train = load_cifar(name, tmp_path, "train")
    test = load_cifar(name, path if not extract else tmp_path, "test")
    assert len(train) == 4 * len(spec.train)
    assert len(test) == 4
    assert train.images.shape[1:] == (3, 32, 32)
    assert len(train.classes) == spec.num_classes
    # the official layout: 1024 red values, then green, then blue, each row-major
    raw = _cifar_images(4, len(spec.train))
    assert torch.equal(test.images[2, 1], torch.from_numpy(raw[2, 1024:2048].reshape(32, 32)))
    assert test.labels.tolist() == [(len(spec.train) + j) % spec.num_classes for j in range(4)]


def test_cifar_wrong_archive_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_cifar(tmp_path, "cifar100")
    trust(monkeypatch, "cifar10", path)
    with pytest.raises(DataError, match=r"not the cifar10 archive.*cifar100") as err:
        load_cifar("cifar10", path, "train")
    assert str(path) in str(err.value)


def test_cifar_corrupt_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"definitely not a tar archive")
    with pytest.raises(DataError, match="expected the official c58f30108f718f92721af3b95e74349a") as err:
        load_cifar("cifar10", tmp_path, "test")
    assert str(bad) in str(err.value)
    trust(monkeypatch, "cifar10", bad)
    with pytest.raises(DataError, match=r"not a readable tar\.gz archive") as err:
        load_cifar("cifar10", tmp_path, "test")
    with pytest.raises(DataError, match=r"no cifar10 data at .*--data.download"):
        load_cifar("cifar10", tmp_path / "nowhere", "test")


def test_cifar_truncated_member_is_a_clear_error(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path, "cifar10", extract=True)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar("cifar10", tmp_path, "train")


def test_download_checks_the_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"pretend archive"

    def fake_retrieve(url: str, target: Path) -> None:
        assert url == D.CIFAR_ARCHIVES["cifar10"].url
        Path(target).write_bytes(payload)

    monkeypatch.setattr(D.urllib.request, "urlretrieve", fake_retrieve)
    with pytest.raises(DataError, match="checksum mismatch"):
        D.download_cifar("cifar10", tmp_path)
    assert not list(tmp_path.iterdir())  # the partial download is removed
    good = dataclasses.replace(D.CIFAR_ARCHIVES["cifar10"], md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(D.CIFAR_ARCHIVES, "cifar10", good)
    path = D.download_cifar("cifar10", tmp_path)
    assert path.read_bytes() == payload
    assert path.name == "cifar-10-python.tar.gz"
    monkeypatch.setattr(D.urllib.request, "urlretrieve", lambda *a: pytest.fail("downloaded a verified archive again"))
    assert D.download_cifar("cifar10", tmp_path) == path  # verified once, then trusted by size and mtime
    assert (tmp_path / "cifar-10-python.tar.gz.md5-ok").is_file()


def _write_folder(root: Path, classes: dict[str, int], split: str = "train", size: int = 20) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            arr = rng.integers(0, 256, size=(size, size + 6, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"img{i}.png")


def test_image_folder_pipeline(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"cat": 3, "dog": 2}, "train")
    _write_folder(tmp_path, {"cat": 1, "dog": 1}, "val")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, hflip=True, randaugment_layers=2)
    assert data_info(cfg).num_classes == 2
    splits = build_splits(cfg, seed=3)
    assert splits.classes == ["cat", "dog"]
    assert len(splits.train) == 5
    assert len(splits.val) == 2
    x, y = splits.train[(1, 4)]
    assert x.shape == (3, 16, 16)
    assert x.dtype == torch.float32
    assert y == 1
    assert torch.equal(splits.train[(1, 4)][0], x)  # keyed augmentation is reproducible
    assert not torch.equal(splits.train[(2, 4)][0], x)
    # worker processes decode and augment exactly as the main process does
    sampler = EpochSampler(len(splits.train), shuffle=True, seed=3)
    sampler.set_epoch(1)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=5, sampler=sampler, num_workers=2)
    (batch, labels), keys = next(iter(loader)), list(sampler)
    expected = torch.stack([splits.train[k][0] for k in keys])
    assert torch.equal(batch, expected)
    assert labels.tolist() == [splits.train[k][1] for k in keys]
    xv, _ = splits.val[0]
    assert xv.shape == (3, 16, 16)


def test_image_folder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", "train")
    _write_folder(tmp_path, {"cat": 2}, "train")
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"empty class folder.*train/dog"):
        ImageFolderDataset(tmp_path, "train")
    _write_folder(tmp_path, {"dog": 1}, "train")
    _write_folder(tmp_path, {"cat": 1, "bird": 1}, "val")
    with pytest.raises(DataError, match=r"missing \['dog'\], unexpected \['bird'\]"):
        ImageFolderDataset(tmp_path, "val", classes=["cat", "dog"])


def test_unreadable_images_error_or_skip(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"a": 30, "b": 30}, "train", size=8)
    bad = tmp_path / "train" / "b" / "img7.png"
    bad.write_bytes(b"not a png")
    ds = ImageFolderDataset(tmp_path, "train")
    index = [str(p) for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DataError, match=r"cannot decode image .*img7\.png.*bad_images skip"):
        ds.load(index)
    lazy = ImageFolderDataset(tmp_path, "train", bad_images="skip", max_bad_fraction=0.05)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*img7\.png"):
        img, label = lazy.load(index)
    assert img.size == (14, 8) and label == 1  # the next image of the same class stands in
    assert [p for p, _ in lazy.skipped] == [bad]
    with pytest.warns(UserWarning, match=r"(?s)skipping 1 unreadable image.*img7\.png"):
        verified = ImageFolderDataset(tmp_path, "train", bad_images="skip", max_bad_fraction=0.05, verify=True)
    assert len(verified) == 59 and verified.skipped[0][0] == bad
    with pytest.raises(DataError, match=r"1 of 60 images .* unreadable"):
        ImageFolderDataset(tmp_path, "train", bad_images="skip", max_bad_fraction=0.001, verify=True)
    strict = ImageFolderDataset(tmp_path, "train", bad_images="skip", max_bad_fraction=0.001)
    with (
        pytest.warns(UserWarning, match="skipping unreadable image"),
        pytest.raises(DataError, match=r"exceed max_bad_fraction=0.001 of 60"),
    ):
        strict.load(index)


def test_synthetic_is_deterministic_and_learnable() -> None:
    a = make_synthetic(64, 4, 8, 3, seed=1)
    b = make_synthetic(64, 4, 8, 3, seed=1)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    # class means differ far more than the noise allows: nearest-class-mean classification works
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(4)])
    test = make_synthetic(32, 4, 8, 3, seed=2)
    dist = ((test.images.float()[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (dist.argmin(1) == test.labels).float().mean() > 0.9


def test_epoch_sampler_shards_union_to_the_single_process_batches() -> None:
    single = list(EpochSampler(20, shuffle=True, seed=5))
    ranks = [list(EpochSampler(20, shuffle=True, seed=5, rank=r, world_size=2)) for r in range(2)]
    b = 3
    for i in range(len(ranks[0]) // b):
        union = sorted(ranks[0][i * b : (i + 1) * b] + ranks[1][i * b : (i + 1) * b])
        assert union == sorted(single[2 * i * b : 2 * (i + 1) * b])
    sampler = EpochSampler(20, shuffle=True, seed=5)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != single
    assert all(e == 1 for e, _ in epoch1)
    assert sorted(i for _, i in epoch1) == list(range(20))
    assert len(EpochSampler(5, shuffle=False, rank=1, world_size=2, pad=False)) == 2


def test_build_splits_digits_and_validation() -> None:
    splits = build_splits(DataConfig(name="digits", crop_padding=1, val_fraction=0.1), seed=0)
    x, _y = splits.train[(0, 0)]
    assert x.shape == (1, 8, 8)
    assert x.dtype == torch.float32
    with pytest.raises(ValueError, match=r"data.name='mnist'"):
        DataConfig(name="mnist").validate()
    with pytest.raises(ValueError, match=r"data\.root is required"):
        DataConfig(name="cifar10").validate()


class _Payload:
    """Unpickling this would create ``target``: the test that no CIFAR member can run code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


@pytest.mark.parametrize("extract", [False, True])
def test_cifar_crafted_pickle_never_runs_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extract: bool) -> None:
    marker = tmp_path / "PWNED"
    folder = write_cifar(tmp_path / "src", "cifar10", extract=True)
    evil = {b"data": _cifar_images(4, 0), b"labels": [0, 1, 2, 3], b"note": _Payload(marker)}
    (folder / "data_batch_2").write_bytes(pickle.dumps(evil))
    pickle.loads((folder / "test_batch").read_bytes())  # a sane member still loads with the plain unpickler
    root = tmp_path / "src"
    if not extract:
        root = tmp_path / "arch"
        root.mkdir()
        path = root / D.CIFAR_ARCHIVES["cifar10"].filename
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        trust(monkeypatch, "cifar10", path)
    with pytest.raises(DataError, match=r"data_batch_2 is not a readable CIFAR pickle: global builtins\.exec is not"):
        load_cifar("cifar10", root, "train")
    assert not marker.exists()
    assert len(load_cifar("cifar10", root, "test")) == 4  # numpy arrays and builtins still load


def test_cifar_numpy_pickles_of_every_protocol_load() -> None:
    arr = _cifar_images(3, 1)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        blob = pickle.dumps({b"data": arr, b"labels": [1, 2, 3], b"x": np.float32(2.5)}, protocol=protocol)
        got = D._unpickle(blob, "member")
        assert np.array_equal(got[b"data"], arr) and got[b"labels"] == [1, 2, 3] and got[b"x"] == 2.5


def test_cifar_md5_is_checked_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_cifar(tmp_path, "cifar10", mark_verified=False)
    trust(monkeypatch, "cifar10", path)
    calls = []
    real_md5 = D._md5
    monkeypatch.setattr(D, "_md5", lambda p: calls.append(p) or real_md5(p))
    load_cifar("cifar10", tmp_path, "test")
    load_cifar("cifar10", tmp_path, "train")
    assert len(calls) == 1  # the second load trusts the marker (same size and mtime)
    assert (tmp_path / "cifar-10-python.tar.gz.md5-ok").is_file()
    # a replaced archive (new mtime) is checked again and refused
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz has md5 .* expected the official"):
        load_cifar("cifar10", tmp_path, "test")
    assert len(calls) == 2


def test_cifar_bad_gzip_crc_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_cifar(tmp_path, "cifar10")
    blob = bytearray(path.read_bytes())
    blob[-8] ^= 0x01  # the gzip trailer's CRC-32: tarfile alone stops at the end-of-archive blocks and never sees it
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="has md5"):  # the official-MD5 check catches it first
        load_cifar("cifar10", tmp_path, "test")
    trust(monkeypatch, "cifar10", path)  # even when the MD5 is not the guard, the stream is read to its CRC
    with pytest.raises(DataError, match=r"not a readable tar.gz archive \(CRC check failed"):
        load_cifar("cifar10", tmp_path, "test")


def _save(path: Path, arr: np.ndarray, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)


@pytest.mark.parametrize("kind", ["png16", "tiff16", "float"])
def test_high_bit_depth_images_are_scaled_to_8_bits(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    v16 = rng.integers(0, 65536, size=(6, 7)).astype(np.uint16)
    expected = np.rint(v16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    if kind == "float":
        arr, fmt, expected = v16.astype(np.float32) / 65535, "TIFF", np.rint(v16 / 65535 * 255).astype(np.uint8)
    else:
        arr, fmt = v16, "PNG" if kind == "png16" else "TIFF"
    _save(tmp_path / "train" / "a" / f"x.{fmt.lower()}", arr, fmt)
    img, _ = ImageFolderDataset(tmp_path, "train").load(0)
    got = np.asarray(img)
    assert got.shape == (6, 7, 3)
    assert np.abs(got[..., 0].astype(int) - expected).max() <= 1  # float32 storage may round one step
    assert np.array_equal(got[..., 0], got[..., 2])
    if kind != "float":
        assert np.array_equal(got[..., 0], expected)


def test_unscalable_images_are_refused_naming_the_file(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a" / "big.tiff", np.full((4, 4), 7.5, np.float32), "TIFF")
    _save(tmp_path / "train" / "b" / "int32.tiff", np.full((4, 4), 1 << 20, np.int32), "TIFF")
    ds = ImageFolderDataset(tmp_path, "train")
    with pytest.raises(DataError, match=r"big\.tiff.*values in \[7\.5, 7\.5\]; expected finite values in \[0, 1\]"):
        ds.load(0)
    with pytest.raises(DataError, match=r"32-bit integer image .*int32\.tiff"):
        ds.load(1)


def test_verify_images_catches_truncated_jpeg(tmp_path: Path) -> None:
    from PIL import Image

    _write_folder(tmp_path, {"a": 40, "b": 40}, "train", size=8)
    rng = np.random.default_rng(1)
    bad = tmp_path / "train" / "a" / "trunc.jpg"
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(bad, "JPEG", quality=95)
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])  # header intact, scan data cut short
    with Image.open(bad) as img:
        img.verify()  # the header check alone passes: this is why verify_images decodes
    with pytest.warns(UserWarning, match=r"(?s)skipping 1 unreadable image.*trunc\.jpg.*truncated"):
        ds = ImageFolderDataset(tmp_path, "train", bad_images="skip", max_bad_fraction=0.05, verify=True)
    assert [p for p, _ in ds.skipped] == [bad] and len(ds) == 80
