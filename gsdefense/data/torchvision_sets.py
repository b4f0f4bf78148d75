"""FashionMNIST and CIFAR-10 through torchvision, converted to tensors once from the raw arrays.

Going through ``.data``/``.targets`` instead of per-sample ``__getitem__`` avoids 60k PIL round-trips. Missing files
(or a failed download) become a DatasetNotFoundError that says where torchvision looks and how to fix it.
``fashion_mnist_3_4`` is not a builder: it is ``fashion_mnist`` with ``classes: [3, 4]`` (a YAML preset).
"""

from __future__ import annotations

import http.client
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
        if not self.data_dir:
            raise ConfigError("dataset.data_dir", "must be a folder path, got an empty string.", "e.g. data.")


@dataclass
class FashionMNISTConfig(TorchvisionConfig):
    name: str = "fashion_mnist"


@dataclass
class CIFAR10Config(TorchvisionConfig):
    name: str = "cifar10"


def _not_found(*, cfg: TorchvisionConfig, folder: Path, files: tuple[str, ...], reason: str) -> DatasetNotFoundError:
    inside = folder.relative_to(Path(cfg.data_dir).expanduser().resolve())
    how = (
        "set dataset.download=true on a machine with internet access, "
        f"or copy the files ({', '.join(files)}) into {folder}, "
        f"or point dataset.data_dir (env GSDEFENSE_DATA_DIR) at a folder that contains {inside}/ with them."
    )
    problem = f"{cfg.name} files not found in {folder} ({reason})."
    return DatasetNotFoundError("dataset.data_dir", problem, how)


def _load_pair(cls: Any, *, cfg: TorchvisionConfig, folder: Path, files: tuple[str, ...]) -> tuple[Any, Any]:
    """Train and test sets of torchvision dataset ``cls``; not-found / download errors become DatasetNotFoundError."""
    root = str(Path(cfg.data_dir).expanduser().resolve())
    try:
        train = cls(root=root, train=True, download=cfg.download)
        # The train call has already fetched every file, test included.
        test = cls(root=root, train=False, download=False)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:
        # URLError/timeouts are OSErrors; torchvision reports missing or corrupt files as RuntimeError.
        reason = f"download failed: {exc}" if cfg.download else f"dataset.download is false; torchvision says: {exc}"
        raise _not_found(cfg=cfg, folder=folder, files=files, reason=reason) from None
    return train, test


@DATASETS.register("fashion_mnist", FashionMNISTConfig)
def build_fashion_mnist(cfg: FashionMNISTConfig, *, seed: int) -> DataBundle:
    """60k/10k grey images (1, 28, 28) in [0, 1]; the official split, so ``seed`` is unused."""
    from torchvision.datasets import FashionMNIST  # deferred: importing torchvision costs ~1 s

    folder = Path(cfg.data_dir).expanduser().resolve() / "FashionMNIST" / "raw"
    train, test = _load_pair(FashionMNIST, cfg=cfg, folder=folder, files=FASHION_MNIST_FILES)

    def images(ds: Any) -> torch.Tensor:
        return ds.data.unsqueeze(1).to(torch.float32).div_(255.0)

    return make_bundle(
        name="fashion_mnist",
        x_train=images(train),
        y_train=torch.as_tensor(train.targets, dtype=torch.int64),
        x_test=images(test),
        y_test=torch.as_tensor(test.targets, dtype=torch.int64),
        class_names=list(train.classes),
    )


@DATASETS.register("cifar10", CIFAR10Config)
def build_cifar10(cfg: CIFAR10Config, *, seed: int) -> DataBundle:
    """50k/10k colour images (3, 32, 32) in [0, 1]; the official split, so ``seed`` is unused."""
    from torchvision.datasets import CIFAR10  # deferred: importing torchvision costs ~1 s

    folder = Path(cfg.data_dir).expanduser().resolve() / "cifar-10-batches-py"
    train, test = _load_pair(CIFAR10, cfg=cfg, folder=folder, files=CIFAR10_FILES)

    def images(ds: Any) -> torch.Tensor:
        # torchvision stores CIFAR as HWC uint8 numpy; the models want CHW.
        hwc = torch.from_numpy(np.ascontiguousarray(ds.data))
        return hwc.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)

    return make_bundle(
        name="cifar10",
        x_train=images(train),
        y_train=torch.as_tensor(train.targets, dtype=torch.int64),
        x_test=images(test),
        y_test=torch.as_tensor(test.targets, dtype=torch.int64),
        class_names=list(train.classes),
    )
