"""Dataset loaders: shapes, ranges, fixed splits, `classes`, and torchvision sets on tiny on-disk files."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

from gsdefense.data import DATASETS, load_dataset
from gsdefense.errors import ConfigError, DatasetNotFoundError

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _check_bundle(b, *, shape: tuple[int, ...], n_train: int, n_test: int, k: int) -> None:
    assert b.x_train.shape == (n_train, *shape) and b.x_test.shape == (n_test, *shape)
    assert b.x_train.dtype == b.x_test.dtype == torch.float32
    assert b.y_train.dtype == b.y_test.dtype == torch.int64
    assert b.num_classes == k == len(b.class_names)
    assert set(b.y_train.unique().tolist()) == set(range(k))
    assert b.box == (0.0, 1.0)
    for x in (b.x_train, b.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
    dims = [d for d in range(b.x_train.dim()) if d != 1]
    assert b.mean.shape == b.std.shape == (shape[0],)
    torch.testing.assert_close(b.mean, b.x_train.mean(dim=dims))
    torch.testing.assert_close(b.std, b.x_train.std(dim=dims))


# --- scikit-learn sets -------------------------------------------------------------------------------------------


def test_digits_shapes_pixels_and_stratified_split() -> None:
    b = load_dataset({"name": "digits"}, seed=0)
    _check_bundle(b, shape=(1, 8, 8), n_train=1347, n_test=450, k=10)
    assert b.class_names == tuple(str(i) for i in range(10))
    # Pixels are the raw 0..16 counts divided by 16, and train+test is exactly the whole set.
    both = torch.cat([b.x_train, b.x_test]) * 16
    assert torch.equal(both, both.round())
    assert both.sum().item() == pytest.approx(float(load_digits().images.sum()))
    frac = b.y_test.bincount(minlength=10).float() / (
        b.y_train.bincount(minlength=10) + b.y_test.bincount(minlength=10)
    )
    assert ((frac - 0.25).abs() < 0.02).all(), frac


def test_sklearn_split_ignores_experiment_seed_but_follows_split_seed() -> None:
    for name in ("digits", "breast_cancer", "moons"):
        a, b = load_dataset({"name": name}, seed=0), load_dataset({"name": name}, seed=12345)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test), name
        c = load_dataset({"name": name, "split_seed": 1}, seed=0)
        assert not torch.equal(a.x_train, c.x_train), name


def test_breast_cancer_is_minmax_scaled_on_train() -> None:
    b = load_dataset({"name": "breast_cancer", "test_fraction": 0.2}, seed=0)
    _check_bundle(b, shape=(30,), n_train=455, n_test=114, k=2)
    assert b.class_names == ("malignant", "benign")
    # Train statistics define the box: every feature hits exactly 0 and 1 on train.
    assert torch.equal(b.x_train.amin(0), torch.zeros(30)) and torch.equal(b.x_train.amax(0), torch.ones(30))
    # 212 malignant / 357 benign overall; stratification keeps the ratio in both parts.
    for y in (b.y_train, b.y_test):
        assert (y == 0).float().mean().item() == pytest.approx(212 / 569, abs=0.01)


def test_moons_sizes_balance_and_noise() -> None:
    b = load_dataset({"name": "moons"}, seed=0)
    _check_bundle(b, shape=(2,), n_train=700, n_test=300, k=2)
    assert b.y_train.bincount().tolist() == [350, 350] and b.y_test.bincount().tolist() == [150, 150]
    assert torch.equal(b.x_train.amin(0), torch.zeros(2)) and torch.equal(b.x_train.amax(0), torch.ones(2))
    small = load_dataset({"name": "moons", "n_train": 40, "n_test": 20, "noise": 0.0}, seed=0)
    assert small.x_train.shape == (40, 2) and small.x_test.shape == (20, 2)
    # Noise-free moons: mean height 2/pi (upper) vs 0.5 - 2/pi (lower) over a y-span of 1.5, i.e. ~0.52 apart.
    gap = small.x_train[small.y_train == 0, 1].mean() - small.x_train[small.y_train == 1, 1].mean()
    assert gap.item() == pytest.approx((4 / np.pi - 0.5) / 1.5, abs=0.05)


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"name": "digits", "test_fraction": 1.0}, "dataset.test_fraction"),
        ({"name": "breast_cancer", "test_fraction": 0.0}, "dataset.test_fraction"),
        ({"name": "moons", "noise": -0.1}, "dataset.noise"),
        ({"name": "moons", "n_train": 0}, "dataset.n_train"),
        ({"name": "digits", "colour": True}, "dataset.colour"),
        ({"name": "mnist"}, "dataset.name"),
        ({"name": "fashion_mnist", "data_dir": ""}, "dataset.data_dir"),
    ],
)
def test_bad_config_values_name_the_field(node: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset(node, seed=0)
    assert err.value.field == field


# --- the generic `classes` option ---------------------------------------------------------------------------------


def test_classes_subsets_and_relabels_in_given_order() -> None:
    full = load_dataset({"name": "digits"}, seed=0)
    sub = load_dataset({"name": "digits", "classes": [7, 2]}, seed=0)
    assert sub.num_classes == 2 and sub.class_names == ("7", "2")
    for part in ("train", "test"):
        x_full, y_full = getattr(full, f"x_{part}"), getattr(full, f"y_{part}")
        x_sub, y_sub = getattr(sub, f"x_{part}"), getattr(sub, f"y_{part}")
        assert torch.equal(x_sub[y_sub == 0], x_full[y_full == 7])
        assert torch.equal(x_sub[y_sub == 1], x_full[y_full == 2])
        assert len(y_sub) == int(((y_full == 7) | (y_full == 2)).sum())
    # Normalisation statistics describe the subset, not the full set.
    torch.testing.assert_close(sub.mean, sub.x_train.mean().reshape(1))
    assert not torch.allclose(sub.mean, full.mean)


def test_classes_can_swap_binary_labels() -> None:
    b = load_dataset({"name": "breast_cancer"}, seed=0)
    s = load_dataset({"name": "breast_cancer", "classes": [1, 0]}, seed=0)
    assert torch.equal(s.y_train, 1 - b.y_train) and torch.equal(s.x_test, b.x_test)
    assert s.class_names == ("benign", "malignant")


@pytest.mark.parametrize("classes", [[3], [3, 3], [2, 10], [-1, 2]])
def test_bad_classes_raise_config_error_listing_valid_ids(classes: list[int]) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset({"name": "digits", "classes": classes}, seed=0)
    assert err.value.field == "dataset.classes"
    assert "0=0" in str(err.value) and "9=9" in str(err.value)


# --- YAML presets ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option", ["digits", "breast_cancer", "moons", "fashion_mnist", "fashion_mnist_3_4", "cifar10"]
)
def test_yaml_lists_every_key_with_its_default(option: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSDEFENSE_DATA_DIR", "/somewhere/data")
    node = OmegaConf.load(CONF / f"{option}.yaml")
    cfg = DATASETS.config(node)
    assert set(node.keys()) == {f.name for f in dataclasses.fields(cfg)}
    expected = dataclasses.replace(type(cfg)(), classes=[3, 4] if option == "fashion_mnist_3_4" else None)
    if hasattr(cfg, "data_dir"):
        assert cfg.data_dir == "/somewhere/data"
        expected = dataclasses.replace(expected, data_dir="/somewhere/data")
    assert cfg == expected


# --- torchvision sets on tiny files in the real on-disk format -----------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file as on yann.lecun.com: big-endian magic (0x08 = ubyte, then ndim) and dims, then raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(root: Path, *, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Tiny FashionMNIST in torchvision's layout; returns the arrays written."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        # torchvision 0.2x never reads the downloaded .gz: it gunzips them and its _check_exists wants the
        # un-gzipped files (existence only, no md5). The .gz twins are written to mirror a real download.
        _write_idx(raw / name, array)
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
    assert struct.unpack(">I", (raw / "train-images-idx3-ubyte").read_bytes()[:4])[0] == 2051
    assert struct.unpack(">I", (raw / "train-labels-idx1-ubyte").read_bytes()[:4])[0] == 2049
    return arrays


def test_fashion_mnist_round_trips_pixels_and_labels(tmp_path: Path) -> None:
    arrays = _write_fashion_mnist(tmp_path, n_train=30, n_test=20)
    b = load_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path), "download": False}, seed=0)
    _check_bundle(b, shape=(1, 28, 28), n_train=30, n_test=20, k=10)
    assert b.class_names == FASHION_NAMES
    assert torch.equal(
        (b.x_train[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(arrays["train-images-idx3-ubyte"])
    )
    assert torch.equal(
        (b.x_test[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(arrays["t10k-images-idx3-ubyte"])
    )
    assert b.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert b.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_3_4_preset_is_dress_vs_coat(tmp_path: Path) -> None:
    arrays = _write_fashion_mnist(tmp_path, n_train=30, n_test=20)
    node = OmegaConf.load(CONF / "fashion_mnist_3_4.yaml")
    node.data_dir, node.download = str(tmp_path), False
    b = load_dataset(node, seed=0)
    assert b.name == "fashion_mnist" and b.class_names == ("Dress", "Coat")
    y_orig = arrays["train-labels-idx1-ubyte"]
    assert b.y_train.tolist() == [0 if y == 3 else 1 for y in y_orig if y in (3, 4)]
    dresses = torch.from_numpy(arrays["train-images-idx3-ubyte"][y_orig == 3]).float() / 255
    torch.testing.assert_close(b.x_train[b.y_train == 0, 0], dresses)
    assert b.y_test.bincount().tolist() == [2, 2]  # test labels 3*i % 10 hit 3 and 4 twice each in 20 samples


def test_gzipped_fashion_mnist_alone_is_not_enough_without_download(tmp_path: Path) -> None:
    _write_fashion_mnist(tmp_path, n_train=4, n_test=4)
    for f in (tmp_path / "FashionMNIST" / "raw").glob("*-ubyte"):
        f.unlink()
    with pytest.raises(DatasetNotFoundError):
        load_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path), "download": False}, seed=0)


def test_cifar10_round_trips_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    # CIFAR10 md5-checks every batch against the real files' hashes, which tiny files cannot match, so only the
    # integrity check is patched (to existence); reading and unpickling stay torchvision's own code.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 4}
    written = {}
    for i, (fname, n) in enumerate(batches.items()):
        # Real batches are row-major (n, 3072) uint8: 1024 red, then green, then blue values per image.
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [(i + j) % 10 for j in range(n)]}
        (folder / fname).write_bytes(pickle.dumps(entry))
        written[fname] = entry
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    b = load_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": False, "classes": None}, seed=0)
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert b.x_train.shape == (10, 3, 32, 32) and b.x_test.shape == (4, 3, 32, 32)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64 and b.num_classes == 10
    assert b.class_names == tuple(names)
    pixels = np.concatenate([t["data"] for t in train]).reshape(10, 3, 32, 32)
    assert torch.equal((b.x_train * 255).round().to(torch.uint8), torch.from_numpy(pixels))
    assert b.y_train.tolist() == [y for t in train for y in t["labels"]]
    assert b.y_test.tolist() == written["test_batch"]["labels"]
    assert b.mean.shape == (3,)
    torch.testing.assert_close(b.mean, b.x_train.mean(dim=(0, 2, 3)))


@pytest.mark.parametrize(
    ("name", "inside"), [("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py")]
)
def test_missing_files_without_download_say_where_and_how(
    name: str, inside: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset({"name": name, "data_dir": "data", "download": False}, seed=0)
    msg = str(err.value)
    # The relative data_dir is reported as the absolute folder torchvision looks in.
    assert str(tmp_path.resolve() / "data" / inside) in msg
    assert "dataset.download=true" in msg and "dataset.data_dir" in msg
    assert isinstance(err.value, ConfigError) and err.value.field == "dataset.data_dir"
