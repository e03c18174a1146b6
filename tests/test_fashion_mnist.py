"""Fashion-MNIST: where its files are looked up, its split, its IDX reader, random erasing.

The data set itself comes from Debian's ``dataset-fashion-mnist`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import morphnas.train.data as data_module
from morphnas.cli import app
from morphnas.errors import DataError
from morphnas.train import augment, download_dataset, load_dataset
from morphnas.train.augment import random_erase
from morphnas.train.data import FASHION_FILES, find_fashion_mnist, read_idx


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _fake_folder(folder: Path, gz: bool = True) -> Path:
    """The four file names, each a small valid IDX file (enough for the lookup, not for loading)."""
    folder.mkdir(parents=True)
    for name in FASHION_FILES:
        body = _idx_bytes(np.zeros((2, 28, 28) if "images" in name else (2,), np.uint8))
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(body))
        else:
            (folder / name).write_bytes(body)
    return folder


def test_lookup_order_is_data_root_then_env_then_debian(tmp_path: Path, monkeypatch) -> None:
    debian = _fake_folder(tmp_path / "debian")
    env = _fake_folder(tmp_path / "env" / "fashion-mnist")
    root = _fake_folder(tmp_path / "root" / "FashionMNIST" / "raw", gz=False)  # torchvision's layout, unpacked
    monkeypatch.setattr(data_module, "DEBIAN_FASHION", debian)
    monkeypatch.setenv("MORPHNAS_DATA", str(tmp_path / "env"))
    assert find_fashion_mnist(tmp_path / "root") == root
    assert find_fashion_mnist(tmp_path / "nothing") == env
    monkeypatch.delenv("MORPHNAS_DATA")
    assert find_fashion_mnist(tmp_path / "nothing") == debian
    monkeypatch.chdir(tmp_path)  # the default data root is ./data
    _fake_folder(tmp_path / "data")
    assert find_fashion_mnist() == Path("data")


def test_missing_files_are_one_line_naming_the_package_and_download(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_module, "DEBIAN_FASHION", tmp_path / "debian")
    monkeypatch.setenv("MORPHNAS_DATA", str(tmp_path / "env"))
    incomplete = _fake_folder(tmp_path / "root")
    (incomplete / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_root=tmp_path / "root")
    message = str(err.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message and "--download" in message
    assert str(tmp_path / "root") in message and str(tmp_path / "env") in message
    with pytest.raises(DataError, match="fetches fashion-mnist only"):
        download_dataset("mnist5k", tmp_path)


def test_read_idx_reads_plain_and_gzip_and_refuses_what_is_not_idx(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a"), array) and np.array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "short").write_bytes(_idx_bytes(array)[:-1])
    (tmp_path / "text").write_bytes(b"not an idx file")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_wrong_shapes_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_module, "DEBIAN_FASHION", tmp_path / "none")
    _fake_folder(tmp_path / "root")  # valid IDX files of 2 images each: not Fashion-MNIST
    with pytest.raises(DataError, match="does not hold Fashion-MNIST"):
        load_dataset("fashion-mnist", data_root=tmp_path / "root")


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", split_seed=0)


def test_split_is_54000_6000_official_10000_stratified_and_seeded(fashion) -> None:
    data = fashion
    assert data.name == "fashion-mnist" and data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert torch.bincount(data.val.y).tolist() == [600] * 10
    assert torch.bincount(data.train.y).tolist() == [5400] * 10
    assert torch.bincount(data.test.y).tolist() == [1000] * 10
    assert data.augment == "crop_flip"
    mean = data.train.x.mean().item()
    assert abs(mean) < 1e-4 and abs(data.train.x.std().item() - 1) < 1e-4  # normalised by the train split
    other = load_dataset("fashion-mnist", split_seed=1, augment="crop_flip_erase")
    raw_pixels = [d.test.x * d.std[0] + d.mean[0] for d in (data, other)]  # each split's own normalisation undone
    assert torch.allclose(*raw_pixels, atol=1e-5) and torch.equal(other.test.y, data.test.y)  # the official test set
    assert not torch.equal(other.val.x, data.val.x) and other.augment == "crop_flip_erase"
    # the test split is the official file, in its order: its first label is the file's first label
    raw = read_idx(find_fashion_mnist() / "t10k-labels-idx1-ubyte.gz")
    assert torch.equal(data.test.y, torch.as_tensor(raw, dtype=torch.int64))


def test_train_command_takes_fashion_mnist(tmp_path: Path) -> None:
    args = ["train", "--arch", "mlp", "--dataset", "fashion-mnist", "--epochs", "0.05", "--json"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["test_error"] < 0.5  # 0.05 epochs of 54,000 images: well above chance
    refused = CliRunner().invoke(app, ["train", "--arch", "mlp", "--dataset", "digits", "--download", "--out",
                                       str(tmp_path / "other")])
    assert refused.exit_code == 2 and "--download fetches fashion-mnist only" in refused.output


def test_random_erase_zeroes_one_rectangle_in_about_half_the_images() -> None:
    x = torch.randn(400, 1, 28, 28) + 5.0  # no pixel is zero before
    out = random_erase(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, random_erase(x, torch.Generator().manual_seed(0)))
    zero = out == 0
    erased = zero.flatten(1).any(1)
    assert 150 < int(erased.sum()) < 250  # p = 0.5
    for i in torch.nonzero(erased).flatten().tolist():
        rows, cols = torch.nonzero(zero[i, 0], as_tuple=True)
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert len(rows) == h * w  # one filled rectangle
        assert 0.02 * 784 - 28 <= h * w <= 0.33 * 784 + 28
    assert torch.equal(out[~erased], x[~erased])
    both = augment(x, "crop_flip_erase", torch.Generator().manual_seed(0))
    assert both.shape == x.shape and not torch.equal(both, out)
