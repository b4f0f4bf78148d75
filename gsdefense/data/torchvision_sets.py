"""FashionMNIST and CIFAR-10 through torchvision, converted to tensors once from the raw arrays.

Going through ``.data``/``.targets`` instead of per-sample ``__getitem__`` avoids 60k PIL round-trips. Torchvision
is the one reader of the files; everything it may raise is turned into one line at this boundary:

- files missing (and not downloadable: no internet, or ``download: false``) -> DatasetNotFoundError, saying where
  torchvision looks and how to put the files there;
- files present but unreadable (empty, truncated, garbage, an md5 mismatch for CIFAR-10) or inconsistent (image
  and label counts differ, labels out of range) -> ConfigError naming ``dataset.data_dir``.

``fashion_mnist_3_4`` is not a builder: it is ``fashion_mnist`` with ``classes: [3, 4]`` and ``validation_fraction:
0.1`` (a YAML preset; Hong et al. train on 10,800 of the 12,000 dress and coat images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsdefense.data import DATASETS, DatasetConfig, make_bundle
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError, DatasetNotFoundError

# What torchvision 0.2x needs on disk, relative to ``data_dir``. FashionMNIST reads the *un-gzipped* IDX files
# (``_check_exists`` strips ".gz"); CIFAR-10 also md5-checks every batch file.
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@dataclass
class TorchvisionConfig(DatasetConfig):
    """``data_dir``: torchvision's root folder; ``download``: fetch the files when they are missing."""

    data_dir: str = "data"
    download: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data_dir:
            raise ConfigError("dataset.data_dir", "must be a folder path, got an empty string.", "e.g. data.")


@dataclass
class FashionMNISTConfig(TorchvisionConfig):
    """Raw [0, 1] pixels by default, as Hong et al.'s loader (``x / 255``, no standardisation)."""

    name: str = "fashion_mnist"
    input_norm: str = "none"


@dataclass
class CIFAR10Config(TorchvisionConfig):
    """``symmetric`` ([0, 1] -> [-1, 1]) by default, as Narcissus' pipeline (``Normalize((0.5,)*3, (0.5,)*3)``),
    which the limitations study's Table 2 runs; Hong et al.'s CNN saw raw [0, 1] pixels (``input_norm: none``)."""

    name: str = "cifar10"
    input_norm: str = "symmetric"


def one_line(exc: BaseException, *, limit: int = 240) -> str:
    """An exception's text on one line (torchvision's download errors span several), at most ``limit`` chars."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _not_found(*, cfg: TorchvisionConfig, folder: Path, missing: list[str], reason: str) -> DatasetNotFoundError:
    inside = folder.relative_to(Path(cfg.data_dir).expanduser().resolve())
    elsewhere = f"or point dataset.data_dir (env GSDEFENSE_DATA_DIR) at a folder that holds {inside}/ with them."
    if cfg.download:
        problem = f"{cfg.name} files {', '.join(missing)} are not in {folder}, and downloading them failed ({reason})."
        how = (
            f"this machine cannot download them (no internet access?): fetch them where there is (torchvision's "
            f"{cfg.name} with download=True), copy them into {folder}, {elsewhere}"
        )
    else:
        problem = f"{cfg.name} files {', '.join(missing)} are not in {folder}, and dataset.download is false."
        how = f"copy them into {folder}, set dataset.download=true on a machine with internet access, {elsewhere}"
    return DatasetNotFoundError("dataset.data_dir", problem, how)


def _unreadable(*, cfg: TorchvisionConfig, folder: Path, files: tuple[str, ...], reason: str) -> ConfigError:
    return ConfigError(
        "dataset.data_dir",
        f"the {cfg.name} files in {folder} cannot be read ({reason}).",
        f"replace {', '.join(files)} there with intact copies (delete them and, with internet access, let "
        "dataset.download=true fetch them again).",
    )


def _load_pair(cls: Any, *, cfg: TorchvisionConfig, folder: Path, files: tuple[str, ...]) -> tuple[Any, Any]:
    """Train and test sets of torchvision dataset ``cls``; its errors become one-line ConfigErrors (see above)."""
    root = str(Path(cfg.data_dir).expanduser().resolve())
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and not cfg.download:
        raise _not_found(cfg=cfg, folder=folder, missing=missing, reason="")
    try:
        train = cls(root=root, train=True, download=bool(missing))
        # The train call has already fetched every file, test included.
        test = cls(root=root, train=False, download=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read user files is reported as one line
        if missing:
            raise _not_found(cfg=cfg, folder=folder, missing=missing, reason=one_line(exc)) from None
        reason = one_line(exc)
        if "corrupted" in reason:  # torchvision's md5 check (CIFAR-10) words a bad file as "not found or corrupted"
            reason = "a file is truncated or altered: it fails torchvision's md5 check"
        raise _unreadable(cfg=cfg, folder=folder, files=files, reason=reason) from None
    return train, test


def _labels(ds: Any, n: int, *, cfg: TorchvisionConfig, folder: Path, files: tuple[str, ...]) -> torch.Tensor:
    """``ds.targets`` as int64, checked against the image count and the class list."""
    try:
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _unreadable(cfg=cfg, folder=folder, files=files, reason=f"labels: {one_line(exc)}") from None
    k = len(ds.classes)
    if len(y) != n:
        raise _unreadable(cfg=cfg, folder=folder, files=files, reason=f"{n} images but {len(y)} labels")
    if len(y) == 0:
        raise _unreadable(cfg=cfg, folder=folder, files=files, reason="no images")
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise _unreadable(cfg=cfg, folder=folder, files=files, reason=f"labels outside 0..{k - 1}")
    return y


@DATASETS.register("fashion_mnist", FashionMNISTConfig)
def build_fashion_mnist(cfg: FashionMNISTConfig, *, seed: int) -> DataBundle:
    """60k/10k grey images (1, 28, 28) in [0, 1]; the official split, so ``seed`` is unused."""
    from torchvision.datasets import FashionMNIST  # deferred: importing torchvision costs ~1 s

    folder = Path(cfg.data_dir).expanduser().resolve() / "FashionMNIST" / "raw"
    files = FASHION_MNIST_FILES
    train, test = _load_pair(FashionMNIST, cfg=cfg, folder=folder, files=files)

    def images(ds: Any) -> torch.Tensor:
        return ds.data.unsqueeze(1).to(torch.float32).div_(255.0)

    x_train, x_test = images(train), images(test)
    return make_bundle(
        name="fashion_mnist",
        x_train=x_train,
        y_train=_labels(train, len(x_train), cfg=cfg, folder=folder, files=files),
        x_test=x_test,
        y_test=_labels(test, len(x_test), cfg=cfg, folder=folder, files=files),
        class_names=list(train.classes),
    )


@DATASETS.register("cifar10", CIFAR10Config)
def build_cifar10(cfg: CIFAR10Config, *, seed: int) -> DataBundle:
    """50k/10k colour images (3, 32, 32) in [0, 1]; the official split, so ``seed`` is unused."""
    from torchvision.datasets import CIFAR10  # deferred: importing torchvision costs ~1 s

    folder = Path(cfg.data_dir).expanduser().resolve() / "cifar-10-batches-py"
    files = CIFAR10_FILES
    train, test = _load_pair(CIFAR10, cfg=cfg, folder=folder, files=files)

    def images(ds: Any) -> torch.Tensor:
        # torchvision stores CIFAR as HWC uint8 numpy; the models want CHW.
        hwc = torch.from_numpy(np.ascontiguousarray(ds.data))
        return hwc.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)

    x_train, x_test = images(train), images(test)
    return make_bundle(
        name="cifar10",
        x_train=x_train,
        y_train=_labels(train, len(x_train), cfg=cfg, folder=folder, files=files),
        x_test=x_test,
        y_test=_labels(test, len(x_test), cfg=cfg, folder=folder, files=files),
        class_names=list(train.classes),
    )
