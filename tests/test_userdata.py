"""The user's own data: .npz files and image folders, split and normalised like the built-in sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.errors import DataError
from morphnas.train import load_dataset


def digits_arrays():
    bunch = load_digits()
    return (bunch.data * 255 / 16).astype(np.uint8).reshape(-1, 8, 8), bunch.target.astype(np.int64)


def test_npz_without_a_test_split_is_split_70_15_15_stratified_and_normalised(tmp_path):
    x, y = digits_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}", split_seed=1)
    builtin = load_dataset("digits", split_seed=1)  # the same images, the same split rule
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and data.augment == "none"
    assert (len(data.train), len(data.val), len(data.test)) == (len(builtin.train), len(builtin.val),
                                                                len(builtin.test))
    assert torch.equal(torch.bincount(data.test.y), torch.bincount(builtin.test.y))
    mean, std = data.train.x.mean(), data.train.x.std()
    assert abs(mean) < 1e-4 and abs(std - 1) < 1e-3


def test_npz_keeps_its_test_split_and_takes_a_tenth_for_validation_channels_last_ok(tmp_path):
    x, y = digits_arrays()
    rgb = np.repeat(x[..., None], 3, axis=3)  # N x H x W x C
    np.savez(tmp_path / "d.npz", x=rgb[:1500], y=y[:1500] + 5, x_test=rgb[1500:], y_test=y[1500:] + 5)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.input_shape == (3, 8, 8) and data.num_classes == 10  # labels 5..14 mapped to 0..9
    assert (len(data.train), len(data.val), len(data.test)) == (1350, 150, len(y) - 1500)
    assert data.test.y.tolist() == (y[1500:]).tolist()


def write_images(root, classes=("cat", "dog"), n=8, size=(40, 30), mode="RGB"):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = (rng.random(shape) * 100 + 120 * k).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")


def test_imagefolder_is_resized_cropped_and_labelled_by_sorted_folder(tmp_path):
    write_images(tmp_path / "rgb")
    data = load_dataset(f"imagefolder:{tmp_path / 'rgb'}", image_size=16)
    assert data.input_shape == (3, 16, 16) and data.num_classes == 2
    assert len(data.train) + len(data.val) + len(data.test) == 16
    # class 1 ("dog") was drawn brighter: its normalised mean is above class 0's
    x, y = torch.cat([data.train.x, data.val.x, data.test.x]), torch.cat([data.train.y, data.val.y, data.test.y])
    assert x[y == 1].mean() > x[y == 0].mean()
    write_images(tmp_path / "grey", mode="L")
    assert load_dataset(f"imagefolder:{tmp_path / 'grey'}").input_shape == (1, 32, 32)


def bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: bad_npz(p, x=np.zeros((20, 8, 8))), "needs arrays x and y"),
    (lambda p: bad_npz(p, x=np.zeros((20, 8, 8)), y=np.zeros(19, dtype=int)), "20 images but 19 labels"),
    (lambda p: bad_npz(p, x=np.zeros((20, 8, 8)), y=np.zeros(20, dtype=int)), "at least two classes"),
    (lambda p: bad_npz(p, x=np.zeros((20, 8, 8)), y=np.zeros(20)), "integer labels"),
    (lambda p: bad_npz(p, x=np.zeros((20, 5)), y=np.arange(20) % 2), "got shape (20, 5)"),
    (lambda p: bad_npz(p, x=np.zeros((20, 8, 8)), y=np.arange(20) % 2, x_test=np.zeros((4, 9, 9)),
                       y_test=np.arange(4) % 2), "x_test images are"),
    (lambda p: bad_npz(p, x=np.array([{"a": 1}] * 3, dtype=object), y=np.arange(3)), "cannot read"),
    (lambda p: (p / "junk.npz").write_bytes(b"not a zip") or p / "junk.npz", "cannot read"),
    (lambda p: bad_npz(p, x=np.zeros((3, 8, 8)), y=np.arange(3) % 2), "cannot be split"),
])
def test_malformed_npz_is_one_line_naming_the_problem(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=None) as info:
        load_dataset(f"npz:{path}")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_image_folders_are_one_line_naming_the_problem(tmp_path):
    write_images(tmp_path / "one", classes=("only",))
    write_images(tmp_path / "empty")
    (tmp_path / "empty" / "bird").mkdir()
    write_images(tmp_path / "broken")
    (tmp_path / "broken" / "dog" / "x.png").write_bytes(b"\x89PNG not really")
    for root, message in (("one", "at least two classes"), ("empty", "'bird' has no images"),
                          ("broken", "cannot read image"), ("missing", "does not exist")):
        with pytest.raises(DataError) as info:
            load_dataset(f"imagefolder:{tmp_path / root}")
        assert message in str(info.value), str(info.value)


runner = CliRunner()


def test_train_on_an_npz_file_and_refuse_a_bad_one_through_the_cli(tmp_path):
    x, y = digits_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    result = runner.invoke(app, ["train", "--arch", "cnn", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--epochs", "1",
                                 "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["val_error"] < 0.5
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    result = runner.invoke(app, ["train", "--arch", "cnn", "--dataset", f"npz:{tmp_path / 'bad.npz'}",
                                 "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "cannot read" in result.output and "Traceback" not in result.output
