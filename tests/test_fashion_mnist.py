"""FashionMNIST with no manual steps: every layout the loader reads and its search order, each malformed file as one
line naming it, downloads that leave nothing behind, torchvision's absence, and the real data (Debian's package
dataset-fashion-mnist) end to end through the CLI.

Tiny files in the official IDX format stand in for the real ones, with the loader's 60,000/10,000 count check
shrunk to their size; the system location (Debian's folder) is pointed at a tmp folder or at nothing.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gsdefense.data import load_dataset, torchvision_sets
from gsdefense.errors import ConfigError, DatasetNotFoundError
from tests.conftest import CONF, run_cli
from tests.fmnist_files import FILES, idx_bytes, no_system_copy, tiny_counts, tree, write_fashion_mnist, write_file

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
REAL = all((SYSTEM / f"{name}.gz").is_file() for name in FILES)
needs_real = pytest.mark.skipif(
    not REAL,
    reason=f"Debian's dataset-fashion-mnist is not installed ({SYSTEM}): apt-get install dataset-fashion-mnist",
)


@pytest.fixture(autouse=True)
def _tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """No system copy and no env unless a test sets one; counts of the tiny files (20 train, 10 test)."""
    no_system_copy(monkeypatch)
    tiny_counts(monkeypatch)


def _load(data_dir: Path | str | None, *, download: bool = False):
    return load_dataset({"name": "fashion_mnist", "data_dir": None if data_dir is None else str(data_dir),
                         "download": download}, seed=0)  # fmt: skip


def _same(bundle, arrays: dict[str, np.ndarray]) -> bool:
    """The bundle holds exactly ``arrays`` (pixels x/255, labels)."""
    pixels = (bundle.x_train[:, 0] * 255).round().to(torch.uint8)
    return (
        torch.equal(pixels, torch.from_numpy(arrays["train-images-idx3-ubyte"]))
        and bundle.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
        and bundle.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    )


def _one_line(call, *, cls: type[ConfigError] = ConfigError) -> str:
    with pytest.raises(cls) as err:
        call()
    msg = str(err.value)
    assert err.value.field == "dataset.data_dir" and msg.startswith("dataset.data_dir: ") and "\n" not in msg
    return msg


# --- every layout, and the search order -----------------------------------------------------------------------------

LAYOUTS = {  # where the files lie: (root the config names, folder under it, gzipped per file)
    "raw_gz": ("data_dir", "FashionMNIST/raw", True),
    "raw_plain": ("data_dir", "FashionMNIST/raw", False),
    "raw_mixed": ("data_dir", "FashionMNIST/raw", (True, False, False, True)),
    "flat_gz": ("data_dir", "", True),
    "flat_plain": ("data_dir", "", False),
    "env_raw_gz": ("env", "FashionMNIST/raw", True),
    "env_flat": ("env", "", False),
    "system": ("system", "", True),
    "default_data": ("cwd", "data/FashionMNIST/raw", True),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_is_read(layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    where, sub, gz = LAYOUTS[layout]
    root = tmp_path / "root"
    folder = root / sub if sub else root
    arrays = write_fashion_mnist(folder, gz=gz)
    data_dir = root if where == "data_dir" else None
    if where == "env":
        monkeypatch.setenv("GSDEFENSE_DATA_DIR", str(root))
    elif where == "system":
        monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_SYSTEM_DIR", folder)
    elif where == "cwd":
        monkeypatch.chdir(root)
    before = tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="gsdefense.data.torchvision_sets"):
        bundle = _load(data_dir)
    assert _same(bundle, arrays)
    source = {"data_dir": "dataset.data_dir", "env": "GSDEFENSE_DATA_DIR", "cwd": "default"}.get(where, where)
    assert f"FashionMNIST: reading {folder} ({source})" in caplog.text
    assert tree(tmp_path) == before  # reading writes nothing (no un-gzipped copies, no folders)


def test_search_order_is_data_dir_then_env_then_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = {name: write_fashion_mnist(tmp_path / name, gz=True, seed=i) for i, name in enumerate(("a", "b", "c"))}
    monkeypatch.setenv("GSDEFENSE_DATA_DIR", str(tmp_path / "b"))
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "c")
    assert _same(_load(tmp_path / "a"), sets["a"])
    assert _same(_load(None), sets["b"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _same(_load(empty), sets["b"])  # a data_dir without the files passes to the next location
    monkeypatch.delenv("GSDEFENSE_DATA_DIR")
    assert _same(_load(empty), sets["c"])


def test_a_half_copied_set_is_named_not_passed_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion_mnist(tmp_path / "system", gz=True)
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    raw = tmp_path / "mine" / "FashionMNIST" / "raw"
    write_fashion_mnist(raw, gz=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").unlink()
    msg = _one_line(lambda: _load(tmp_path / "mine"))
    assert f"{raw} holds 2 of FashionMNIST's 4 files; missing: t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in msg


@pytest.mark.parametrize("named", ["data_dir", "env"])
def test_a_named_folder_that_does_not_exist(named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = write_fashion_mnist(tmp_path / "system", gz=True)
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    missing = tmp_path / "typo"
    if named == "env":
        monkeypatch.setenv("GSDEFENSE_DATA_DIR", str(missing))
    data_dir = missing if named == "data_dir" else None
    msg = _one_line(lambda: _load(data_dir), cls=DatasetNotFoundError)
    what = f"dataset.data_dir {missing}" if named == "data_dir" else f"GSDEFENSE_DATA_DIR={missing}"
    assert f"{what} is not a folder." in msg and "dataset.download=true" in msg
    # With download on it is the download target; the system copy is found first and nothing is created.
    assert _same(_load(data_dir, download=True), system) and not missing.exists()


# --- malformed files: one line naming the file, nothing left behind -------------------------------------------------

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
BAD = {  # case: (file to replace, its new content (gzipped when the case says so), expected text)
    "bad_magic": (TRAIN_IMAGES, idx_bytes(np.zeros(20 * 784, np.uint8)), "has magic number 0x00000801, not 0x00000803"),
    "labels_as_images": (TRAIN_IMAGES, idx_bytes(np.zeros(20, np.uint8)), "magic number 0x00000801"),
    "truncated": (TRAIN_IMAGES, idx_bytes(np.zeros((20, 28, 28), np.uint8))[:-1], "holds 15679: truncated"),
    "trailing": (TRAIN_IMAGES, idx_bytes(np.zeros((20, 28, 28), np.uint8)) + b"\0", "followed by extra bytes"),
    "header_cut": (TRAIN_IMAGES, idx_bytes(np.zeros((20, 28, 28), np.uint8))[:9], "truncated inside its header"),
    "not_28x28": (TRAIN_IMAGES, idx_bytes(np.zeros((20, 32, 32), np.uint8)), "images are 32×32, FashionMNIST's are"),
    "wrong_count": (TRAIN_IMAGES, idx_bytes(np.zeros((21, 28, 28), np.uint8)), "21 images but train-labels-idx1"),
    "label_count": (TRAIN_LABELS, idx_bytes(np.zeros(19, np.uint8)), "20 images but train-labels-idx1-ubyte"),
    "labels_out_of_range": (TRAIN_LABELS, idx_bytes(np.full(20, 10, np.uint8)), "labels outside 0..9 (found 10)"),
    "bad_gzip": (TRAIN_IMAGES, gzip.compress(idx_bytes(np.zeros((20, 28, 28), np.uint8)))[:-9], "damaged gzip file"),
}


@pytest.mark.parametrize(
    ("case", "gz"), [(c, gz) for c in BAD for gz in (False, True) if gz or c != "bad_gzip"], ids=lambda v: str(v)
)
def test_a_malformed_file_is_one_line_naming_it(case: str, gz: bool, tmp_path: Path) -> None:
    name, content, expected = BAD[case]
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fashion_mnist(raw, gz=gz)
    bad = raw / (f"{name}.gz" if gz else name)
    bad.write_bytes(gzip.compress(content) if gz and case != "bad_gzip" else content)
    before = tree(tmp_path)
    msg = _one_line(lambda: _load(tmp_path))
    named = raw / (f"{TRAIN_IMAGES}.gz" if gz else TRAIN_IMAGES) if case == "label_count" else bad  # images first
    assert msg.startswith(f"dataset.data_dir: {named}: ") and expected in msg and "Fix: replace it" in msg
    assert case != "label_count" or " has 19 labels." in msg
    assert tree(tmp_path) == before


def test_the_official_counts_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_COUNTS", {"train": 60_000, "t10k": 10_000})
    write_fashion_mnist(tmp_path, gz=True)
    msg = _one_line(lambda: _load(tmp_path))
    assert f"{tmp_path / 'train-images-idx3-ubyte.gz'}: 20 images, the official train split has 60,000" in msg


# --- downloads ------------------------------------------------------------------------------------------------------


def _fake_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fail_on: str | None = None) -> Path:
    """torchvision's per-file download writes the tiny files (the .gz and its extraction); ``fail_on`` raises
    after a partial file. Temporary folders go to the returned folder, so the test can see them cleaned."""
    import torchvision.datasets.mnist as tv_mnist

    arrays = write_fashion_mnist(tmp_path / "source", gz=False)

    def download(url: str, download_root: str, filename: str, md5: str) -> None:
        name = filename.removesuffix(".gz")
        if name == fail_on:
            (Path(download_root) / filename).write_bytes(b"\x1f\x8b partial")
            raise RuntimeError("connection reset by peer")
        write_file(Path(download_root) / name, idx_bytes(arrays[name]), gz=True)
        write_file(Path(download_root) / name, idx_bytes(arrays[name]), gz=False)

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", download)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def test_a_download_lands_in_data_and_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = _fake_download(tmp_path, monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    bundle = _load(None, download=True)
    assert len(bundle.y_train) == 20 and len(bundle.y_test) == 10
    assert tree(work) == ["data", "data/FashionMNIST", "data/FashionMNIST/raw"] + sorted(
        f"data/FashionMNIST/raw/{name}{ext}" for name in FILES for ext in ("", ".gz")
    )
    assert tree(temp) == []  # the download's temporary folder is gone
    assert _same(_load(None), write_fashion_mnist(tmp_path / "again", gz=False))  # read again without download


def test_a_failed_download_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = _fake_download(tmp_path, monkeypatch, fail_on="t10k-images-idx3-ubyte")
    target = tmp_path / "work" / "data"
    msg = _one_line(lambda: _load(target, download=True), cls=DatasetNotFoundError)
    assert f"downloading them into {target / 'FashionMNIST' / 'raw'} failed" in msg and "connection reset" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert not (tmp_path / "work").exists() and tree(temp) == []


# --- without torchvision (a CPU-only torch beside a mismatched or absent torchvision) --------------------------------


@pytest.fixture
def no_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import torchvision`` raises ImportError, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "torchvision", None)


def test_files_on_disk_need_no_torchvision(tmp_path: Path, no_torchvision) -> None:
    arrays = write_fashion_mnist(tmp_path, gz=True)
    assert _same(_load(tmp_path), arrays)


def test_a_download_without_torchvision_names_the_offline_route(tmp_path: Path, no_torchvision) -> None:
    msg = _one_line(lambda: _load(tmp_path / "data", download=True), cls=DatasetNotFoundError)
    assert "torchvision, which downloads them, cannot be imported: ModuleNotFoundError" in msg
    assert (
        "Fix: install the torchvision made for torch" in msg
        and "--index-url https://download.pytorch.org/whl/cpu" in msg
    )
    assert "apt-get install dataset-fashion-mnist" in msg and not (tmp_path / "data").exists()


def test_resnet18_and_trigger_images_without_torchvision_are_one_line(tmp_path: Path, no_torchvision) -> None:
    from PIL import Image

    from gsdefense.attacks.blend import load_pattern
    from gsdefense.models import build_model

    with pytest.raises(ConfigError) as err:
        build_model(OmegaConf.create({"name": "resnet18"}), input_shape=(3, 32, 32), num_classes=10, mean=None,
                    std=None)  # fmt: skip
    msg = str(err.value)
    assert err.value.field == "model" and "model=resnet18 needs torchvision, which cannot be imported here" in msg
    assert "--index-url https://download.pytorch.org/whl/cpu" in msg and msg.endswith("or use model=cnn.")
    build_model(OmegaConf.create({"name": "cnn"}), input_shape=(3, 32, 32), num_classes=10, mean=None, std=None)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "t.png")
    with pytest.raises(ConfigError) as err:
        load_pattern(str(tmp_path / "t.png"), (1, 8, 8), (0.0, 1.0))
    assert err.value.field == "attack.trigger_path" and "attack.trigger_path=null" in str(err.value)


def test_cli_resnet18_beside_a_broken_torchvision_is_one_line(tmp_path: Path) -> None:
    """A PyPI torchvision beside PyTorch's CPU torch fails to import with this error; the run says so and stops."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {"PYTHONPATH": f"{tmp_path / 'site'}"}
    proc = run_cli(
        "model=resnet18", "attack=none", "dp=none", f"hydra.run.dir={tmp_path / 'run'}", env=env, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: model: model=resnet18 needs torchvision, which cannot be imported here")
    assert "RuntimeError: operator torchvision::nms does not exist" in lines[0]
    assert not (tmp_path / "run" / "history.csv").exists()


# --- the real data (Debian's dataset-fashion-mnist) -----------------------------------------------------------------


@needs_real
def test_real_files_have_the_official_counts_and_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_SYSTEM_DIR", SYSTEM)
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_COUNTS", {"train": 60_000, "t10k": 10_000})
    full = load_dataset(OmegaConf.load(CONF / "dataset" / "fashion_mnist.yaml"), seed=0)
    assert full.x_train.shape == (60_000, 1, 28, 28) and full.x_test.shape == (10_000, 1, 28, 28)
    assert full.y_train.bincount().tolist() == [6000] * 10 and full.y_test.bincount().tolist() == [1000] * 10
    assert full.y_train[:5].tolist() == [9, 0, 0, 3, 0] and full.y_test[:5].tolist() == [9, 2, 1, 1, 6]
    assert float(full.x_train.min()) == 0.0 and float(full.x_train.max()) == 1.0
    assert float(full.x_train.mean()) == pytest.approx(0.2860, abs=1e-4)  # FashionMNIST's well-known pixel mean
    # Hong et al.'s FashionMNIST-3/4: dress (3) -> 0, coat (4) -> 1; 600 per class held out of 6,000.
    hong = load_dataset(OmegaConf.load(CONF / "dataset" / "fashion_mnist_3_4.yaml"), seed=0)
    assert hong.class_names == ("Dress", "Coat")
    assert hong.y_train.bincount().tolist() == [5400, 5400] and hong.y_val.bincount().tolist() == [600, 600]
    assert hong.y_test.bincount().tolist() == [1000, 1000]
    dresses = full.x_train[full.y_train == 3]
    assert torch.equal(torch.sort(torch.cat([hong.x_train[hong.y_train == 0], hong.x_val[hong.y_val == 0]])
                                  .flatten(1).sum(1))[0], torch.sort(dresses.flatten(1).sum(1))[0])  # fmt: skip


def _cli_metrics(tmp_path: Path, *args: str) -> dict:
    run_dir = tmp_path / "run"
    # No env, no data_dir: the files come from the system location, as on a fresh machine with the package.
    env = {"GSDEFENSE_DATA_DIR": ""}
    proc = run_cli(*args, "seed=0", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"FashionMNIST: reading {SYSTEM} (system)" in (run_dir / "launch.log").read_text()
    assert not (tmp_path / "data").exists()  # nothing downloaded, no empty folders
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    return metrics


@needs_real
@pytest.mark.slow
def test_cli_fashion_mnist_3_4_lr_label_flip(tmp_path: Path) -> None:
    """The issue's command, a few epochs: Hong et al.'s 10,800 training images, all 2,000 test images."""
    m = _cli_metrics(tmp_path, "dataset=fashion_mnist_3_4", "model=lr", "attack=label_flip", "optimizer.epochs=3")
    assert m["n_poison"] == 1080 and m["n_train"] == 10_800  # label_flip replace: 10 % of the 10,800 relabelled
    assert 0.85 <= m["clean_acc"] <= 0.97 and m["epsilon"] > 0
    appended = _cli_metrics(tmp_path, "dataset=fashion_mnist_3_4", "model=lr", "attack=label_flip",
                            "attack.mode=append", "optimizer.epochs=1", "dp=none")  # fmt: skip
    assert appended["n_train"] == 10_800 + appended["n_poison"] and appended["n_poison"] == 1080


@needs_real
@pytest.mark.slow
def test_cli_fashion_mnist_mlp(tmp_path: Path) -> None:
    """All ten classes, 60,000 training images, the MLP, one epoch of DP-SGD with a BadNets patch."""
    m = _cli_metrics(tmp_path, "dataset=fashion_mnist", "model=mlp", "attack=badnets", "optimizer.epochs=1")
    assert m["n_train"] == 60_000 + m["n_poison"] and m["n_poison"] == 6000  # append: 10 % of 60,000
    assert 0.6 <= m["clean_acc"] <= 0.9 and m["asr"] is not None
