"""Data sets: splits, normalisation, the synthetic rule, the CIFAR readers, augmentation."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from morphnas.errors import DataError
from morphnas.train import DATASETS, affine_augment, augment, cifar_augment, load_dataset


def _check_normalised(split_x: torch.Tensor) -> None:
    assert split_x.dtype == torch.float32
    mean = split_x.mean(dim=(0, 2, 3))
    std = split_x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)


def test_datasets_lists_every_name() -> None:
    assert DATASETS == ("mnist5k", "digits", "fashion-mnist", "cifar10", "cifar100", "synthetic", "npz:FILE",
                        "imagefolder:DIR")


def test_mnist5k_split_is_4000_500_500_disjoint_and_seeded() -> None:
    data = load_dataset("mnist5k")
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and data.augment == "shift"
    assert load_dataset("mnist5k", augment=False).augment == "none"
    assert load_dataset("mnist5k", augment="affine").augment == "affine"
    with pytest.raises(DataError, match="unknown augmentation 'rotate'"):
        load_dataset("mnist5k", augment="rotate")
    assert (len(data.train), len(data.val), len(data.test)) == (4000, 500, 500)
    assert data.train.y.dtype == torch.int64
    assert torch.bincount(data.test.y).tolist() == [50] * 10  # stratified
    _check_normalised(data.train.x)
    rows = {x.numpy().tobytes() for x in torch.cat([data.train.x, data.val.x, data.test.x])}
    assert len(rows) == 5000  # the 5,000 distinct images, none in two splits
    again = load_dataset("mnist5k", split_seed=0)
    assert torch.equal(again.test.x, data.test.x)
    other = load_dataset("mnist5k", split_seed=1)
    assert not torch.equal(other.test.y, data.test.y)


def test_digits_is_seeded_70_15_15() -> None:
    data = load_dataset("digits", split_seed=3)
    assert data.input_shape == (1, 8, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (1257, 270, 270)
    assert torch.equal(load_dataset("digits", split_seed=3).val.y, data.val.y)
    _check_normalised(data.train.x)


def test_synthetic_has_any_shape_is_deterministic_and_learnable() -> None:
    data = load_dataset("synthetic", synthetic_shape=(3, 12, 10), synthetic_classes=4, synthetic_size=400)
    assert data.input_shape == (3, 12, 10) and data.num_classes == 4
    assert (len(data.train), len(data.val), len(data.test)) == (280, 60, 60)
    again = load_dataset("synthetic", synthetic_shape=(3, 12, 10), synthetic_classes=4, synthetic_size=400)
    assert torch.equal(again.train.x, data.train.x)
    # the rule is learnable: the nearest class mean of the train split classifies the test split well
    means = torch.stack([data.train.x[data.train.y == k].mean(0) for k in range(4)]).flatten(1)
    nearest = torch.cdist(data.test.x.flatten(1), means).argmin(1)
    assert (nearest == data.test.y).float().mean() > 0.9


@pytest.mark.parametrize(
    "options",
    [{"synthetic_shape": (28, 28)}, {"synthetic_classes": 1}, {"synthetic_size": 10}],
)
def test_synthetic_rejects_bad_options(options: dict) -> None:
    with pytest.raises(DataError):
        load_dataset("synthetic", **options)


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; choose one of mnist5k, digits"):
        load_dataset("imagenet")


# --- CIFAR ---------------------------------------------------------------------------------------


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _write_binary(root: Path, batches: list[tuple[np.ndarray, np.ndarray]], test: tuple[np.ndarray, np.ndarray]):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (x, y) in [*((f"data_batch_{i}.bin", b) for i, b in enumerate(batches, 1)), ("test_batch.bin", test)]:
        records = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
    return folder


def _write_python(root: Path, batches: list[tuple[np.ndarray, np.ndarray]], test: tuple[np.ndarray, np.ndarray]):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (x, y) in [*((f"data_batch_{i}", b) for i, b in enumerate(batches, 1)), ("test_batch", test)]:
        (folder / name).write_bytes(pickle.dumps({"data": x.reshape(len(x), -1), "labels": y.tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return folder


def _archive() -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    labels = np.arange(20) % 10
    batches = [(_images(20, seed), np.roll(labels, seed)) for seed in range(5)]
    return batches, (_images(10, 99), np.arange(10)[::-1].copy())


def _assert_matches(data, batches, test) -> None:
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10 and data.augment == "crop_flip"
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 10)
    all_labels = np.concatenate([y for _, y in batches])
    assert sorted(torch.cat([data.train.y, data.val.y]).tolist()) == sorted(all_labels.tolist())
    assert data.test.y.tolist() == test[1].tolist()
    _check_normalised(data.train.x)
    raw = torch.as_tensor(test[0], dtype=torch.float32)
    for c in range(3):  # the test images are the written ones up to the per-channel normalisation
        got = data.test.x[:, c]
        scale = raw[:, c].std() / got.std()
        shift = raw[:, c].mean() - scale * got.mean()
        assert torch.allclose(got * scale + shift, raw[:, c], atol=1e-3)


def test_cifar10_binary_reader_loads_written_archive(tmp_path: Path) -> None:
    batches, test = _archive()
    _write_binary(tmp_path, batches, test)
    data = load_dataset("cifar10", data_root=tmp_path)
    _assert_matches(data, batches, test)


def test_cifar10_binary_validation_split_follows_split_seed(tmp_path: Path) -> None:
    _write_binary(tmp_path, *_archive())
    first = load_dataset("cifar10", data_root=tmp_path, split_seed=0)
    assert torch.equal(load_dataset("cifar10", data_root=tmp_path, split_seed=0).val.x, first.val.x)
    assert not torch.equal(load_dataset("cifar10", data_root=tmp_path, split_seed=1).val.x, first.val.x)


def test_cifar100_binary_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    for name, n in [("train.bin", 30), ("test.bin", 5)]:
        fine = (np.arange(n) * 7 + 50) % 100
        coarse = fine // 5
        x = _images(n, n)
        records = np.concatenate([coarse[:, None], fine[:, None], x.reshape(n, -1)], axis=1).astype(np.uint8)
        (folder / name).write_bytes(records.tobytes())
    data = load_dataset("cifar100", data_root=tmp_path)
    assert data.num_classes == 100
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 5)
    assert data.test.y.tolist() == ((np.arange(5) * 7 + 50) % 100).tolist()


def test_cifar_python_version_loads_through_torchvision_md5_check(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR10

    batches, test = _archive()
    folder = _write_python(tmp_path, batches, test)

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    # point torchvision's own MD5 list at the files this test wrote: the check still runs
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    from_python = load_dataset("cifar10", data_root=tmp_path)
    _assert_matches(from_python, batches, test)

    _write_binary(tmp_path / "bin", batches, test)
    from_binary = load_dataset("cifar10", data_root=tmp_path / "bin")
    assert torch.equal(from_python.train.x, from_binary.train.x)
    assert torch.equal(from_python.test.x, from_binary.test.x)


def test_cifar_python_version_failing_md5_is_a_clear_data_error(tmp_path: Path) -> None:
    _write_python(tmp_path, *_archive())
    with pytest.raises(DataError, match="failed torchvision's MD5 check") as info:
        load_dataset("cifar10", data_root=tmp_path)
    assert "\n" not in str(info.value)


def test_cifar_absent_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_root=tmp_path)
    message = str(info.value)
    assert "cifar-10-batches-bin" in message and str(tmp_path) in message and "offline" in message
    assert "\n" not in message


def test_cifar_binary_incomplete_or_malformed(tmp_path: Path) -> None:
    folder = _write_binary(tmp_path, *_archive())
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin is missing"):
        load_dataset("cifar10", data_root=tmp_path)
    (folder / "data_batch_3.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="not a multiple of 3073"):
        load_dataset("cifar10", data_root=tmp_path)
    (folder / "data_batch_3.bin").write_bytes(bytes([12]) + b"\x00" * 3072)
    with pytest.raises(DataError, match="label 12"):
        load_dataset("cifar10", data_root=tmp_path)


# --- augmentation --------------------------------------------------------------------------------


def _view_of(out: torch.Tensor, image: torch.Tensor, pad: int = 4) -> tuple[int, int, bool] | None:
    """The (dy, dx, flipped) crop of the zero-padded ``image`` that equals ``out``, if any."""
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flipped in (False, True):
                if torch.equal(out, crop.flip(-1) if flipped else crop):
                    return dy, dx, flipped
    return None


def test_cifar_augment_crops_and_flips_each_image_from_the_generator() -> None:
    x = torch.arange(1, 64 * 3 * 32 * 32 + 1, dtype=torch.float32).reshape(64, 3, 32, 32)
    out = cifar_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    assert torch.equal(out, cifar_augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, cifar_augment(x, torch.Generator().manual_seed(1)))
    views = [_view_of(out[i], x[i]) for i in range(64)]
    assert None not in views  # every output is a padded crop of its own image, maybe flipped
    assert 16 <= sum(flipped for _, _, flipped in views) <= 48
    assert len({(dy, dx) for dy, dx, _ in views}) > 30


def test_shift_moves_digits_by_up_to_two_pixels_and_never_flips() -> None:
    x = torch.arange(1, 64 * 28 * 28 + 1, dtype=torch.float32).reshape(64, 1, 28, 28)
    out = augment(x, "shift", torch.Generator().manual_seed(0))
    views = [_view_of(out[i], x[i], pad=2) for i in range(64)]
    assert None not in views and not any(flipped for _, _, flipped in views)
    assert len({(dy, dx) for dy, dx, _ in views}) > 15  # of the 25 shifts by -2..2 pixels
    assert augment(x, "none", torch.Generator()) is x
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(x, "rotate", torch.Generator())


def test_cifar_augment_keeps_channels_last() -> None:
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = cifar_augment(x, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_affine_rotates_scales_and_shifts_each_image_and_pads_with_its_border() -> None:
    x = torch.full((64, 1, 28, 28), -0.4)
    x[:, :, 10:18, 12:16] = 2.0  # a bar in the middle, on a background that is not the mean
    out = affine_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, augment(x, "affine", torch.Generator().manual_seed(0)))
    assert not torch.equal(out, affine_augment(x, torch.Generator().manual_seed(1)))
    assert torch.allclose(out[:, :, :2], torch.tensor(-0.4)) and torch.allclose(out[:, :, :, -2:], torch.tensor(-0.4))
    ink = (out + 0.4).clamp_min(0).squeeze(1)
    rows, cols = torch.arange(28.0)[:, None], torch.arange(28.0)
    centre = torch.stack([(ink * rows).sum((1, 2)), (ink * cols).sum((1, 2))], 1) / ink.sum((1, 2))[:, None]
    moved = centre - torch.tensor([13.5, 13.5])
    assert moved.abs().max() <= 2.5 and moved.abs().max() > 1  # up to 2 pixels (a twelfth of 28), bilinearly
    mass = ink.sum((1, 2)) / (2.4 * 32)
    assert 0.75 < mass.min() and mass.max() < 1.3  # scaled by 0.9-1.1 in each direction: area 0.81-1.21
    tall = ((ink > 1).any(2).sum(1), (ink > 1).any(1).sum(1))  # rows and columns the bar covers
    assert (tall[1] > 4).sum() > 16  # rotated: wider than 4 columns in many images


def _moments(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's centre of mass (row, column) and 2 x 2 second central moment, in pixels."""
    h, w = ink.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=ink.dtype), torch.arange(w, dtype=ink.dtype), indexing="ij")
    at = torch.stack([rows, cols]).flatten(1)  # 2 x (h w)
    weights = ink.flatten(1) / ink.flatten(1).sum(1, keepdim=True)
    centre = weights @ at.T
    spread = at[None] - centre[:, :, None]
    return centre, torch.einsum("np,nip,njp->nij", weights, spread, spread)


def test_affine_on_images_that_are_not_square_shifts_by_each_side_and_rotates_without_shear() -> None:
    x = torch.zeros(200, 1, 48, 24)  # a twelfth of each side: 4 rows, 2 columns
    x[:, :, 16:32, 9:15] = 1.0  # a bar, 16 rows by 6 columns
    plain = affine_augment(x, torch.Generator().manual_seed(0), degrees=0.0, scale=0.0)
    centre, flat = _moments(plain.squeeze(1))
    moved = (centre - torch.tensor([23.5, 11.5])).abs().amax(0)
    assert 3.5 < moved[0] <= 4.01 and 1.5 < moved[1] <= 2.01, moved
    _, second = _moments(affine_augment(x, torch.Generator().manual_seed(0), scale=0.0).squeeze(1))
    # a rotation keeps the bar's lengths (the eigenvalues of its second moment) and turns its long
    # axis by the angle drawn; the shear before the fix turned it by 3 degrees at most
    assert torch.allclose(torch.linalg.eigvalsh(second), torch.linalg.eigvalsh(flat), rtol=0.08)
    angle = torch.rad2deg(0.5 * torch.atan2(2 * second[:, 0, 1], second[:, 0, 0] - second[:, 1, 1]))
    assert angle.abs().max() <= 12.1 and angle.abs().max() > 11  # turned by up to 12 degrees either way
    assert (angle > 6).any() and (angle < -6).any()
