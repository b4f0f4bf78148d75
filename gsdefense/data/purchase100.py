"""Purchase-100 (Shokri et al. 2017; Hong et al. §6.1): customer purchase records, binary features, 100 classes.

The data is not redistributable through a package index, so it is read from a user-supplied ``path`` in one of
two forms:

- ``.npz`` (the original release used by Hong et al.): ``arr_0, arr_1, arr_2, arr_3`` = x_train, y_train, x_test,
  y_test. Labels may be class ids or one-hot rows.
- CSV (the common ``dataset_purchase`` release, any other extension): one record per line, the label first, then
  the binary features; no header (a non-numeric first line is skipped as one). It has no split, so ``test_fraction``
  of the records go to the test set by a permutation fixed by ``split_seed``.

Labels 1..100 (no 0 anywhere, as in the common release) are shifted to 0..99. ``n_train``/``n_test`` optionally keep a
seeded random subset of each side (Hong et al.: 10k train and 10k test records). Features must lie in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gsdefense.data import DATASETS, DatasetConfig, make_bundle
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError, DatasetNotFoundError

NUM_CLASSES = 100
FORMATS = (
    "an .npz with arr_0..arr_3 = x_train, y_train, x_test, y_test; or a CSV (e.g. the common 'dataset_purchase' "
    "file) with the label (1..100 or 0..99) first and the binary features after"
)


@dataclass
class Purchase100Config(DatasetConfig):
    name: str = "purchase100"
    path: str = "data/purchase100.npz"
    test_fraction: float = 0.2  # CSV only: the share of records held out for testing
    split_seed: int = 0
    n_train: int | None = None
    n_test: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {self.test_fraction}.", "e.g. 0.2.")
        if self.split_seed < 0:
            raise ConfigError("dataset.split_seed", f"must be >= 0, got {self.split_seed}.")
        for key in ("n_train", "n_test"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"dataset.{key}", f"must be > 0 or null, got {getattr(self, key)}.")


def _read_npz(path: Path) -> tuple[np.ndarray, ...]:
    with np.load(path, allow_pickle=False) as arrays:
        missing = [k for k in ("arr_0", "arr_1", "arr_2", "arr_3") if k not in arrays]
        if missing:
            raise ConfigError(
                "dataset.path", f"{path} lacks {missing} (it has {sorted(arrays)}).", f"provide {FORMATS}."
            )
        return tuple(arrays[f"arr_{i}"] for i in range(4))


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(path, header=None)
    if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):  # a header line makes columns text
        frame = pd.read_csv(path, header=0)
    try:
        values = frame.to_numpy(dtype=np.float32)
    except ValueError as err:
        raise ConfigError("dataset.path", f"{path} has non-numeric values ({err}).", f"provide {FORMATS}.") from None
    if values.ndim != 2 or values.shape[1] < 2:
        raise ConfigError("dataset.path", f"{path} needs a label column and feature columns.", f"provide {FORMATS}.")
    return values[:, 1:], values[:, 0]


def _labels(y: np.ndarray, *, path: Path) -> np.ndarray:
    if y.ndim == 2:  # one-hot rows
        y = y.argmax(axis=1)
    if not np.all(np.equal(np.mod(y, 1), 0)):
        raise ConfigError("dataset.path", f"{path} has non-integer labels.", f"provide {FORMATS}.")
    return y.astype(np.int64)


def _subset(x: np.ndarray, y: np.ndarray, count: int | None, *, rng: np.random.Generator, key: str):
    if count is None:
        return x, y
    if count > len(y):
        raise ConfigError(f"dataset.{key}", f"asks for {count} records but only {len(y)} are available.")
    keep = np.sort(rng.permutation(len(y))[:count])
    return x[keep], y[keep]


@DATASETS.register("purchase100", Purchase100Config)
def build_purchase100(cfg: Purchase100Config, *, seed: int) -> DataBundle:
    """Read ``cfg.path`` (npz or CSV). ``seed`` is unused: the split and subsets are fixed by ``split_seed``."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(
            "dataset.path",
            f"Purchase-100 file {path.resolve()} not found.",
            f"set dataset.path (or env GSDEFENSE_PURCHASE100) to {FORMATS}.",
        )
    rng = np.random.default_rng(cfg.split_seed)
    if path.suffix == ".npz":
        x_tr, y_tr, x_te, y_te = _read_npz(path)
        y_tr, y_te = _labels(y_tr, path=path), _labels(y_te, path=path)
    else:
        x, y = _read_csv(path)
        y = _labels(y, path=path)
        order = rng.permutation(len(y))
        n_test = max(1, round(cfg.test_fraction * len(y)))
        if n_test >= len(y):
            raise ConfigError("dataset.test_fraction", f"leaves no training record out of {len(y)}.")
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
        x_tr, y_tr, x_te, y_te = x[train], y[train], x[test], y[test]
    if min(y_tr.min(initial=1), y_te.min(initial=1)) >= 1:  # no class 0 anywhere: the 1-based release
        y_tr, y_te = y_tr - 1, y_te - 1
    for labels in (y_tr, y_te):
        if len(labels) and not (labels.min() >= 0 and labels.max() < NUM_CLASSES):
            raise ConfigError("dataset.path", f"{path} has labels outside 1..100 / 0..99.", f"provide {FORMATS}.")
    x_tr, x_te = x_tr.reshape(len(x_tr), -1).astype(np.float32), x_te.reshape(len(x_te), -1).astype(np.float32)
    if x_tr.shape[1] != x_te.shape[1]:
        raise ConfigError("dataset.path", f"{path}: train has {x_tr.shape[1]} features, test {x_te.shape[1]}.")
    for x in (x_tr, x_te):
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ConfigError("dataset.path", f"{path} has features outside [0, 1].", "Purchase-100 is binary.")
    x_tr, y_tr = _subset(x_tr, y_tr, cfg.n_train, rng=rng, key="n_train")
    x_te, y_te = _subset(x_te, y_te, cfg.n_test, rng=rng, key="n_test")
    if len(y_tr) == 0 or len(y_te) == 0:
        raise ConfigError("dataset.path", f"{path} gives an empty train or test set.", f"provide {FORMATS}.")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)]
    names = [str(c) for c in range(NUM_CLASSES)]
    return make_bundle(
        name="purchase100",
        x_train=tensors[0],
        y_train=tensors[1],
        x_test=tensors[2],
        y_test=tensors[3],
        class_names=names,
    )
