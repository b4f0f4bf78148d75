"""Dataset loaders: shapes, ranges, fixed splits, `classes`, and torchvision sets on tiny on-disk files."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

from gsdefense.data import DATASETS, load_dataset, torchvision_sets
from gsdefense.errors import ConfigError, DatasetNotFoundError
from gsdefense.models import build_model
from gsdefense.plan import prepare
from tests.conftest import compose_cfg
from tests.fmnist_files import no_system_copy, tiny_counts, tree, write_fashion_mnist

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
    if b.input_norm == "none":
        assert b.mean is None and b.std is None
    else:
        assert b.input_norm == "standardize"
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


# --- input_norm: what reaches the network ---------------------------------------------------------------------------


def _first_layer_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The tensor the model's first Linear/Conv2d receives for input ``x``."""
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
    seen = []
    handle = first.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("model", ["lr", "mlp", "cnn"])
def test_digits_feed_raw_unit_pixels_to_the_network_by_default(model: str) -> None:
    plan = prepare(compose_cfg(f"model={model}", "attack=none", "device=cpu"))
    net = plan.build_model()
    assert isinstance(net[0], torch.nn.Identity) and plan.data.input_norm == "none"
    seen = _first_layer_input(net, plan.data.x_train)
    expected = plan.data.x_train if model == "cnn" else plan.data.x_train.flatten(1)
    assert torch.equal(seen, expected) and seen.min() == 0.0 and seen.max() == 1.0


def test_breast_cancer_is_standardised_with_training_statistics() -> None:
    plan = prepare(compose_cfg("dataset=breast_cancer", "model=lr", "attack=none", "device=cpu"))
    seen = _first_layer_input(plan.build_model(), plan.data.x_train)
    torch.testing.assert_close(seen.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen.std(0), torch.ones(30), atol=1e-5, rtol=0)


def test_input_norm_options_and_stable_state_dicts() -> None:
    node = OmegaConf.create({"name": "mlp", "hidden": 8})
    nets, seen = {}, {}
    for norm in ("none", "standardize", "symmetric"):
        data = load_dataset({"name": "digits", "input_norm": norm}, seed=0)
        torch.manual_seed(0)
        nets[norm] = build_model(node, input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std)
        seen[norm] = _first_layer_input(nets[norm], data.x_train)
    raw = seen["none"]
    torch.testing.assert_close(seen["symmetric"], raw * 2 - 1)  # the box [0, 1] mapped to [-1, 1]
    torch.testing.assert_close(seen["standardize"].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    # Module indices stay put: only the input map's buffers differ, so the network's weights load either way.
    keys = {norm: set(net.state_dict()) for norm, net in nets.items()}
    assert keys["standardize"] == keys["symmetric"] == keys["none"] | {"0.mean", "0.std"}
    nets["none"].load_state_dict({k: v for k, v in nets["standardize"].state_dict().items() if k.startswith("1.")})
    with pytest.raises(ValueError, match="both mean and std"):
        build_model(node, input_shape=(1, 8, 8), num_classes=10, mean=torch.zeros(1), std=None)


def test_model_options_restore_the_original_architectures() -> None:
    def linears(node: dict, shape: tuple[int, ...]) -> list[tuple[int, int]]:
        net = build_model(OmegaConf.create(node), input_shape=shape, num_classes=2, mean=None, std=None)
        return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]

    # The original ShallowMLP: two hidden layers (FashionMNIST-3/4: 100 units); Table 4: one of 256.
    assert linears({"name": "mlp"}, (1, 28, 28)) == [(784, 256), (256, 2)]
    assert linears({"name": "mlp", "hidden": 100, "depth": 2}, (1, 28, 28)) == [(784, 100), (100, 100), (100, 2)]
    # The original's convolutions pad "same": 28 -> 28 -> 28 -> pool 14; padding 0 gives 28 -> 24 -> pool 12.
    assert linears({"name": "cnn"}, (1, 28, 28)) == [(32 * 14 * 14, 64), (64, 2)]
    assert linears({"name": "cnn", "padding": 0, "hidden": 256}, (3, 32, 32)) == [(32 * 14 * 14, 256), (256, 2)]
    for node, field in (({"name": "mlp", "depth": 0}, "model.depth"), ({"name": "cnn", "padding": 2}, "model.padding"),
                        ({"name": "cnn", "padding": 0}, "model.name")):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            linears(node, (1, 5, 5))
        assert err.value.field == field


def test_validation_fraction_holds_out_a_stratified_part_of_train() -> None:
    full = load_dataset({"name": "digits"}, seed=0)
    b = load_dataset({"name": "digits", "validation_fraction": 0.2, "input_norm": "standardize"}, seed=0)
    counts = full.y_train.bincount()
    assert b.y_val.bincount().tolist() == [round(0.2 * int(c)) for c in counts]
    assert len(b.y_train) + len(b.y_val) == len(full.y_train) and torch.equal(b.x_test, full.x_test)
    both = torch.cat([b.x_train, b.x_val]).flatten(1)
    assert torch.equal(both.sort(0).values, full.x_train.flatten(1).sort(0).values)
    torch.testing.assert_close(b.mean, b.x_train.mean().reshape(1))  # statistics of what is left to train on
    assert full.x_val is None and full.y_val is None


@pytest.mark.parametrize(
    ("key", "value"), [("input_norm", "zscore"), ("validation_fraction", 1.0), ("validation_fraction", -0.1)]
)
def test_bad_shared_dataset_keys_name_the_field(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset({"name": "digits", key: value}, seed=0)
    assert err.value.field == f"dataset.{key}"


# --- the generic `classes` option ---------------------------------------------------------------------------------


def test_classes_subsets_and_relabels_in_given_order() -> None:
    full = load_dataset({"name": "digits", "input_norm": "standardize"}, seed=0)
    sub = load_dataset({"name": "digits", "classes": [7, 2], "input_norm": "standardize"}, seed=0)
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
    expected = type(cfg)()
    if option == "fashion_mnist_3_4":  # Hong et al.'s task: dress vs coat, 10,800 of the 12,000 training images
        expected = dataclasses.replace(expected, classes=[3, 4], validation_fraction=0.1)
    if hasattr(cfg, "data_dir"):  # null = search (the env is read when loading, never baked into the config)
        assert cfg.data_dir is None and cfg.download is True
    assert cfg == expected


# --- FashionMNIST and CIFAR-10 on tiny files in the real on-disk format (layouts and errors: test_fashion_mnist.py) -


@pytest.fixture
def tiny_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write tiny FashionMNIST files into ``<tmp>/FashionMNIST/raw`` (no system copy, no env); returns a writer."""
    no_system_copy(monkeypatch)

    def write(**kwargs) -> dict[str, np.ndarray]:
        arrays = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", **kwargs)
        n_train, n_test = len(arrays["train-labels-idx1-ubyte"]), len(arrays["t10k-labels-idx1-ubyte"])
        tiny_counts(monkeypatch, n_train=n_train, n_test=n_test)
        return arrays

    return write


def test_fashion_mnist_round_trips_pixels_and_labels(tmp_path: Path, tiny_fashion) -> None:
    arrays = tiny_fashion(n_train=30, n_test=20, gz=True)
    b = load_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path), "download": False}, seed=0)
    _check_bundle(b, shape=(1, 28, 28), n_train=30, n_test=20, k=10)
    assert b.class_names == FASHION_NAMES
    assert torch.equal(
        (b.x_train[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(arrays["train-images-idx3-ubyte"])
    )
    assert torch.equal(
        (b.x_test[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(arrays["t10k-images-idx3-ubyte"])
    )
    # x / 255 in float32, as torchvision's path computed it (cached references stay valid).
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1).to(torch.float32).div_(255.0)
    assert torch.equal(b.x_train, expected)
    assert b.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert b.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_3_4_preset_is_dress_vs_coat(tmp_path: Path, tiny_fashion) -> None:
    arrays = tiny_fashion(n_train=200, n_test=20)
    node = OmegaConf.load(CONF / "fashion_mnist_3_4.yaml")
    node.data_dir, node.download = str(tmp_path), False
    b = load_dataset(node, seed=0)
    assert b.name == "fashion_mnist" and b.class_names == ("Dress", "Coat")
    assert b.input_norm == "none" and b.mean is None  # raw [0, 1] pixels reach the model, as in Hong et al.
    y_orig = arrays["train-labels-idx1-ubyte"]
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255
    # 20 dresses and 20 coats: 2 of each are held out, the rest train, each part in the original order.
    assert b.y_train.bincount().tolist() == [18, 18] and b.y_val.bincount().tolist() == [2, 2]
    for c, orig in ((0, 3), (1, 4)):
        kept = torch.cat([b.x_train[b.y_train == c], b.x_val[b.y_val == c]])
        assert sorted(map(bytes, (kept * 255).round().to(torch.uint8).numpy())) == sorted(
            map(bytes, (images[y_orig == orig] * 255).round().to(torch.uint8).numpy())
        )
        order = [int(((images == x).flatten(1).all(1)).nonzero()) for x in b.x_train[b.y_train == c]]
        assert order == sorted(order)
    assert b.y_test.bincount().tolist() == [2, 2]  # test labels 3*i % 10 hit 3 and 4 twice each in 20 samples
    other = load_dataset(OmegaConf.merge(node, {"split_seed": 1}), seed=0)
    assert not torch.equal(other.x_val, b.x_val) and torch.equal(load_dataset(node, seed=5).x_val, b.x_val)


def test_fashion_mnist_3_4_has_hong_sizes_10800_train_1200_validation_2000_test(tmp_path: Path, tiny_fashion) -> None:
    # The real class sizes: 6,000 dresses and 6,000 coats among 12,000 training images (others are dropped).
    labels = np.array([3, 4] * 6000 + [0] * 100, dtype=np.uint8)
    tiny_fashion(n_train=len(labels), n_test=2000, train_labels=labels, test_labels=np.array([3, 4] * 1000, np.uint8))
    node = OmegaConf.load(CONF / "fashion_mnist_3_4.yaml")
    node.data_dir, node.download = str(tmp_path), False
    b = load_dataset(node, seed=0)
    assert b.y_train.bincount().tolist() == [5400, 5400]
    assert b.y_val.bincount().tolist() == [600, 600]
    assert b.y_test.bincount().tolist() == [1000, 1000]


def test_cifar10_round_trips_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The loader md5-checks every batch against the real files' hashes, which tiny files cannot match, so only the
    # md5 table is emptied; reading and unpickling stay the loader's own code.
    monkeypatch.setattr(torchvision_sets, "CIFAR10_MD5", {})
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
    # CIFAR-10 defaults to Narcissus' map [0, 1] -> [-1, 1]: (x - 0.5) / 0.5 per channel.
    assert b.input_norm == "symmetric"
    assert torch.equal(b.mean, torch.full((3,), 0.5)) and torch.equal(b.std, torch.full((3,), 0.5))


@pytest.mark.parametrize(
    ("name", "inside"), [("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py")]
)
def test_missing_files_without_download_say_where_and_how(
    name: str, inside: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_system_copy(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset({"name": name, "data_dir": "data", "download": False}, seed=0)
    msg = str(err.value)
    # The relative data_dir is reported as the absolute folder searched, and where to copy the files.
    assert f"copy {'train-images-idx3-ubyte' if name == 'fashion_mnist' else 'data_batch_1'}" in msg
    assert f"into {tmp_path.resolve() / 'data' / inside} (or point" in msg
    assert "dataset.download=true" in msg and "dataset.data_dir" in msg and "\n" not in msg
    assert ("apt-get install dataset-fashion-mnist" in msg) == (name == "fashion_mnist")
    assert isinstance(err.value, ConfigError) and err.value.field == "dataset.data_dir"
    assert tree(tmp_path) == ["data"]  # nothing created


def test_cifar10_reader_refuses_a_pickle_that_would_call_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision unpickles with pickle.load, which calls whatever a file names; this reader builds arrays only."""
    monkeypatch.setattr(torchvision_sets, "CIFAR10_MD5", {})
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / fname).write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(ConfigError) as err:
        load_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": False}, seed=0)
    assert f"{folder / 'data_batch_2'}: not a CIFAR-10 pickle" in str(err.value) and "posix.mkdir" in str(err.value)
    assert not marker.exists()
