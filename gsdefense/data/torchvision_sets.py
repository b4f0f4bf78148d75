"""FashionMNIST and CIFAR-10 (the sets torchvision distributes), read from their official files without torchvision.

Where the files are found (``dataset.data_dir``, ``$GSDEFENSE_DATA_DIR``, Debian's ``dataset-fashion-mnist``, then
a download) is ``gsdefense.data.sources``; torchvision is imported only to download. Reading:

- FashionMNIST: four IDX files (``gsdefense.data.idx``), gzipped or not; each is checked for its count (60,000
  train / 10,000 test), 28×28 images, labels in 0..9, and images and labels agreeing in number.
- CIFAR-10: the python pickles of ``cifar-10-python.tar.gz``, md5-checked as torchvision does, then unpickled by an
  unpickler that builds only dicts, lists, strings, numbers and numpy arrays (a pickle can otherwise run code).

Any problem is one ConfigError line on ``dataset.data_dir`` naming the file. ``fashion_mnist_3_4`` is not a builder:
it is ``fashion_mnist`` with ``classes: [3, 4]`` and ``validation_fraction: 0.1`` (a YAML preset; Hong et al. train
on 10,800 of the 12,000 dress and coat images).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsdefense.data import DATASETS, DatasetConfig, make_bundle
from gsdefense.data.bundle import DataBundle
from gsdefense.data.idx import IdxError, read_idx
from gsdefense.data.sources import FIELD, Layout, download_root, fetch, locate, not_found
from gsdefense.errors import ConfigError
from gsdefense.optional import CPU_INDEX, torchvision_problem

log = logging.getLogger(__name__)

FASHION_MNIST = Layout(
    title="FashionMNIST",
    files=("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    subdir="FashionMNIST/raw",
    flat=True,
    gz=True,
    offline="apt-get install dataset-fashion-mnist (Debian/Ubuntu; read from /usr/share/datasets/fashion-mnist)",
)
#: Where Debian's package dataset-fashion-mnist puts the four gzipped files (searched after data_dir and the env).
FASHION_MNIST_SYSTEM_DIR: Path | None = Path("/usr/share/datasets/fashion-mnist")
#: Images per split in the official files (the tests shrink it for tiny files).
FASHION_MNIST_COUNTS = {"train": 60_000, "t10k": 10_000}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")  # fmt: skip

CIFAR10 = Layout(
    title="CIFAR-10",
    files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
    subdir="cifar-10-batches-py",
    flat=False,
    gz=False,
    offline="download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html on another machine",
)
#: md5 of the official files (the ones torchvision checks); the tests empty it for tiny files.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


@dataclass
class TorchvisionConfig(DatasetConfig):
    """``data_dir``: the folder to read first (null: search, see ``gsdefense.data.sources``); ``download``: fetch
    the files with torchvision when no location has them. Neither is part of a run's identity."""

    data_dir: str | None = None
    download: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data_dir is not None and not self.data_dir.strip():
            raise ConfigError(FIELD, "must be a folder path or null, got an empty string.", "e.g. data, or null.")


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
    """An exception's text on one line (download errors span several), at most ``limit`` chars."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _download(layout: Layout, *, root: Path, fetcher: str) -> None:
    """Fetch ``layout``'s files into ``root/<subdir>`` with torchvision's ``datasets.<fetcher>`` (see ``fetch``)."""
    cls = getattr(importlib.import_module("torchvision.datasets"), fetcher)

    def into(tmp: Path) -> Path:
        cls(root=str(tmp), download=True)  # the train-set constructor fetches every file, test set included
        return tmp / layout.subdir

    fetch(layout, target_root=root, fetcher=into)


def _files(layout: Layout, cfg: TorchvisionConfig, *, system: Path | None, fetcher: str) -> dict[str, Path]:
    """The dataset's files: found in search order, or downloaded (``gsdefense.data.sources``)."""
    where = {"data_dir": cfg.data_dir, "system": system}
    found = locate(layout, data_dir=cfg.data_dir, download=cfg.download, system=system)
    if found is None and cfg.download:
        problem = torchvision_problem()
        if problem is not None:
            cause = (
                f"install the torchvision made for torch {torch.__version__} to download them (pip install torchvision;"
                f" beside a CPU-only torch: pip install torchvision --index-url {CPU_INDEX})"
            )
            reason = f"torchvision, which downloads them, cannot be imported: {problem}"
            raise not_found(layout, **where, download=True, reason=reason, cause=cause)
        try:
            _download(layout, root=download_root(cfg.data_dir), fetcher=fetcher)
        except Exception as exc:  # noqa: BLE001 - any failure to download is reported as one line
            raise not_found(layout, **where, download=True, reason=one_line(exc)) from None
        found = locate(layout, data_dir=cfg.data_dir, download=False, system=system)
    if found is None:
        raise not_found(layout, **where, download=cfg.download, reason="it brought no files" if cfg.download else None)
    log.info("%s: reading %s (%s)", layout.title, found.folder, found.source)
    return found.files


def _bad(path: Path, problem: str, fix: str) -> ConfigError:
    return ConfigError(FIELD, f"{path}: {problem}.", fix)


def _fashion_split(files: dict[str, Path], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 1, 28, 28) float32 in [0, 1], labels int64) of ``split`` (train | t10k), every property checked."""
    fix = "replace it with an intact copy of the official file (gzipped or not), e.g. Debian's dataset-fashion-mnist."
    images_file, labels_file = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
    try:
        images = read_idx(images_file, ndim=3)
    except IdxError as err:
        raise _bad(images_file, f"not a FashionMNIST image file: it {err}", fix) from None
    try:
        labels = read_idx(labels_file, ndim=1)
    except IdxError as err:
        raise _bad(labels_file, f"not a FashionMNIST label file: it {err}", fix) from None
    if images.shape[1:] != (28, 28):
        raise _bad(images_file, f"images are {images.shape[1]}×{images.shape[2]}, FashionMNIST's are 28×28", fix)
    if len(images) != len(labels):
        raise _bad(images_file, f"{len(images)} images but {labels_file.name} has {len(labels)} labels", fix)
    expected = FASHION_MNIST_COUNTS[split]
    if len(images) != expected:
        raise _bad(images_file, f"{len(images):,} images, the official {split} split has {expected:,}", fix)
    if len(labels) and int(labels.max()) > 9:
        raise _bad(labels_file, f"labels outside 0..9 (found {int(labels.max())})", fix)
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)  # as torchvision's .data / 255
    return x, torch.from_numpy(labels).to(torch.int64)


@DATASETS.register("fashion_mnist", FashionMNISTConfig)
def build_fashion_mnist(cfg: FashionMNISTConfig, *, seed: int) -> DataBundle:
    """60k/10k grey images (1, 28, 28) in [0, 1]; the official split, so ``seed`` is unused."""
    files = _files(FASHION_MNIST, cfg, system=FASHION_MNIST_SYSTEM_DIR, fetcher="FashionMNIST")
    x_train, y_train = _fashion_split(files, "train")
    x_test, y_test = _fashion_split(files, "t10k")
    return make_bundle(name="fashion_mnist", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                       class_names=list(FASHION_MNIST_CLASSES))  # fmt: skip


class _ArraysOnly(pickle.Unpickler):
    """Builds numpy arrays and plain containers only: a hostile pickle cannot call anything else."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")} | {
        (f"numpy.{core}.{mod}", fn) for core in ("core", "_core") for mod, fn in
        (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = module.replace("numpy.core.", "numpy._core.", 1)  # numpy 2 renamed it (and warns on the old)
        return super().find_class(module, name)


def _unpickle(path: Path, key: str) -> Any:
    fix = "replace it with the file from an intact cifar-10-python.tar.gz (or delete them; dataset.download refetches)."
    expected = CIFAR10_MD5.get(path.name)
    data = path.read_bytes()
    if expected is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != expected:
        raise _bad(path, "fails its md5 check (truncated or altered)", fix)
    try:
        entry = _ArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - unpickling garbage raises many types
        raise _bad(path, f"not a CIFAR-10 pickle ({one_line(err, limit=160)})", fix) from None
    if isinstance(entry, dict):
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if not isinstance(entry, dict) or key not in entry:
        raise _bad(path, f"not a CIFAR-10 pickle (no {key!r} entry)", fix)
    return entry


def _cifar_split(files: dict[str, Path], names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in names:
        path = files[name]
        entry = _unpickle(path, "data")
        data, labels = entry["data"], np.asarray(entry.get("labels", []))
        fix = "replace it with the file from an intact cifar-10-python.tar.gz."
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise _bad(path, "'data' is not an (n, 3072) uint8 array of 32×32 colour images", fix)
        if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
            raise _bad(path, f"{len(data)} images but {labels.size} integer labels", fix)
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise _bad(path, "labels outside 0..9", fix)
        xs.append(data)
        ys.append(labels.astype(np.int64))
    # Rows hold 1024 red, then green, then blue values: (n, 3, 32, 32) is the models' CHW.
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    return x, torch.from_numpy(np.concatenate(ys))


@DATASETS.register("cifar10", CIFAR10Config)
def build_cifar10(cfg: CIFAR10Config, *, seed: int) -> DataBundle:
    """50k/10k colour images (3, 32, 32) in [0, 1]; the official split, so ``seed`` is unused."""
    files = _files(CIFAR10, cfg, system=None, fetcher="CIFAR10")
    x_train, y_train = _cifar_split(files, [f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = _cifar_split(files, ["test_batch"])
    names = _unpickle(files["batches.meta"], "label_names")["label_names"]
    if not (isinstance(names, list) and len(names) == 10 and all(isinstance(n, str) for n in names)):
        raise _bad(files["batches.meta"], "'label_names' is not a list of 10 names", "replace it with an intact copy.")
    return make_bundle(name="cifar10", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                       class_names=names)  # fmt: skip
