"""Purchase-100 (Shokri et al. 2017; Hong et al. §6.1): customer purchase records, binary features, 100 classes.

The data is not redistributable through a package index, so it is read from a user-supplied ``path`` in one of
two forms:

- ``.npz`` (the form Hong et al.'s code loads): ``arr_0, arr_1, arr_2, arr_3`` = x_train, y_train, x_test,
  y_test, plain numeric arrays (pickled object arrays are refused). Labels may be class ids or one-hot rows.
- CSV (the common ``dataset_purchase`` release, any other extension): one record per line, the label first, then
  the binary features; no header (a non-numeric first line is skipped as one). It has no split, so ``test_fraction``
  of the records go to the test set by a permutation fixed by ``split_seed``.

Labels 1..100 (no 0 anywhere, as in the common release) are shifted to 0..99. Features must be finite and lie in
[0, 1]; train and test must agree in width, x and y in length.

**Features.** Hong et al. use records "of size 100 (corresponding to the 100 frequently purchased items)": their
loader reshapes Purchase records to 100 features (``analyze_tpoisoning._shape_data``), and their 20k-record npz
(10k train + 10k test) holds 20,000 × 100 float64 values. The common release has 600 features. ``n_features``
(default 100) keeps the ``n_features`` columns with the most ones in the training records (ties: lower column
first; kept in column order); a file with exactly that many columns is used as is; ``null`` keeps all. The
original's own reduction script is not published, so "most frequent" is our reading of the paper.

``n_train``/``n_test`` optionally keep a seeded random subset of each side (Hong et al.: 10k and 10k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gsdefense.data import DATASETS, DatasetConfig, make_bundle
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError, DatasetNotFoundError
from gsdefense.paths import check_path, launch_path

NUM_CLASSES = 100
FORMATS = (
    "an .npz with plain numeric arrays arr_0..arr_3 = x_train, y_train, x_test, y_test; or a CSV (e.g. the common "
    "'dataset_purchase' file) with the label (1..100 or 0..99) first and the binary features after"
)
FIX = f"provide {FORMATS}."


@dataclass
class Purchase100Config(DatasetConfig):
    name: str = "purchase100"
    input_norm: str = "none"  # binary features, fed as they are (Hong et al.)
    path: str = "data/purchase100.npz"
    test_fraction: float = 0.2  # CSV only: the share of records held out for testing
    n_train: int | None = None
    n_test: int | None = None
    n_features: int | None = 100  # the most frequently purchased items kept (Hong et al.: 100); null = all

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {self.test_fraction}.", "e.g. 0.2.")
        for key in ("n_train", "n_test", "n_features"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"dataset.{key}", f"must be > 0 or null, got {getattr(self, key)}.")


def _bad(path: Path, problem: str, fix: str = FIX) -> ConfigError:
    return ConfigError("dataset.path", f"{path} {problem}", fix)


def _read_npz(path: Path) -> tuple[np.ndarray, ...]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a bare .npy renamed .npz
            raise _bad(path, "holds one array, not an .npz archive.")
        with loaded as arrays:
            missing = [k for k in ("arr_0", "arr_1", "arr_2", "arr_3") if k not in arrays.files]
            if missing:
                raise _bad(path, f"lacks {missing} (it has {sorted(arrays.files)}).")
            return tuple(arrays[f"arr_{i}"] for i in range(4))
    except ConfigError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err) and not _is_zip(path):  # numpy tries unpickling whatever is not npz/npy
            raise _bad(path, "is not an .npz archive (nor an .npy array).") from None
        if "allow_pickle" in str(err):
            raise _bad(
                path,
                "holds pickled (object) data, which is refused for safety (numpy allow_pickle=False).",
                "re-save it with numeric arrays: np.savez(path, x_train, y_train, x_test, y_test) with float/int "
                "dtypes.",
            ) from None
        raise _bad(path, f"is not a readable .npz ({_one_line(err)}).") from None
    except Exception as err:  # noqa: BLE001 - zip, zlib and OS errors of a corrupt or truncated file
        raise _bad(path, f"is not a readable .npz ({_one_line(err)}).") from None


def _is_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=None)
        skipped = 0
        if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):  # a header makes columns text
            frame, skipped = pd.read_csv(path, header=0), 1
    except pd.errors.EmptyDataError:
        raise _bad(path, "is empty.") from None
    except Exception as err:  # noqa: BLE001 - ragged rows (ParserError), binary garbage (UnicodeDecodeError), OS
        raise _bad(path, f"is not a readable CSV ({_one_line(err)}).") from None
    if len(frame) == 0:
        raise _bad(path, "has a header line but no records.")
    try:
        values = frame.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise _bad(path, f"has non-numeric values ({_one_line(err)}).") from None
    if values.ndim != 2 or values.shape[1] < 2:
        raise _bad(path, "needs a label column and feature columns.")
    holes = np.isnan(values).any(axis=1)
    if holes.any():
        line = int(holes.argmax()) + 1 + skipped
        raise _bad(path, f"has missing values (line {line} is shorter than the others, or has an empty field).")
    return values[:, 1:], values[:, 0]


def _labels(y: np.ndarray, *, path: Path, part: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # a column vector of ids
        y = y[:, 0]
    elif y.ndim == 2:  # one-hot rows
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise _bad(path, f"has {part} labels of shape {y.shape}; expected ids (n,) or one-hot rows (n, 100).")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.equal(np.mod(y, 1), 0)):
        raise _bad(path, f"has non-integer or missing {part} labels.")
    return y.astype(np.int64)


def _features(x: np.ndarray, *, path: Path, part: str) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise _bad(path, f"has {part} features of dtype {x.dtype}, not numbers.")
    if x.ndim < 2:
        raise _bad(path, f"has {part} features of shape {x.shape}; expected (records, features).")
    x = x.reshape(x.shape[0], int(np.prod(x.shape[1:]))).astype(np.float32)
    if not np.isfinite(x).all():
        raise _bad(path, f"has NaN or infinite {part} features.", "Purchase-100 features are binary (0/1).")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise _bad(path, f"has {part} features outside [0, 1].", "Purchase-100 features are binary (0/1).")
    return x


def frequent_columns(x: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` columns of ``x`` with the largest sums (ties: lower index), ascending."""
    order = np.argsort(-x.sum(axis=0, dtype=np.float64), kind="stable")
    return np.sort(order[:count])


def _subset(x: np.ndarray, y: np.ndarray, count: int | None, *, rng: np.random.Generator, key: str):
    if count is None:
        return x, y
    if count > len(y):
        raise ConfigError(f"dataset.{key}", f"asks for {count} records but only {len(y)} are available.")
    keep = np.sort(rng.permutation(len(y))[:count])
    return x[keep], y[keep]


def _split(cfg: Purchase100Config, path: Path, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """x_train, y_train, x_test, y_test as read (npz) or split (CSV), labels 0-based, features checked."""
    if path.suffix == ".npz":
        x_tr, y_tr, x_te, y_te = _read_npz(path)
        x_tr, x_te = _features(x_tr, path=path, part="train"), _features(x_te, path=path, part="test")
        y_tr, y_te = _labels(y_tr, path=path, part="train"), _labels(y_te, path=path, part="test")
    else:
        x, y = _read_csv(path)
        x, y = _features(x, path=path, part="record"), _labels(y, path=path, part="record")
        n_test = max(1, round(cfg.test_fraction * len(y)))
        if n_test >= len(y):
            raise ConfigError("dataset.test_fraction", f"leaves no training record out of {len(y)}.")
        order = rng.permutation(len(y))
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
        x_tr, y_tr, x_te, y_te = x[train], y[train], x[test], y[test]
    for part, x_part, y_part in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x_part) != len(y_part):
            raise _bad(path, f"has {len(x_part)} {part} records but {len(y_part)} {part} labels.")
        if len(y_part) == 0:
            raise _bad(path, f"has no {part} records.")
    if x_tr.shape[1] != x_te.shape[1]:
        raise _bad(path, f"has {x_tr.shape[1]} train features but {x_te.shape[1]} test features.")
    if min(y_tr.min(), y_te.min()) >= 1:  # no class 0 anywhere: the 1-based release
        y_tr, y_te = y_tr - 1, y_te - 1
    if min(y_tr.min(), y_te.min()) < 0 or max(y_tr.max(), y_te.max()) >= NUM_CLASSES:
        raise _bad(path, "has labels outside 1..100 / 0..99.")
    return x_tr, y_tr, x_te, y_te


@DATASETS.register("purchase100", Purchase100Config)
def build_purchase100(cfg: Purchase100Config, *, seed: int) -> DataBundle:
    """Read ``cfg.path`` (npz or CSV). ``seed`` is unused: the split and subsets are fixed by ``split_seed``."""
    path = check_path(launch_path(cfg.path), field="dataset.path")  # too long, a symlink loop: one line
    if not path.is_file():
        raise DatasetNotFoundError(
            "dataset.path",
            f"Purchase-100 file {path.resolve()} not found{' (it is a directory)' if path.is_dir() else ''}.",
            f"set dataset.path (or env GSDEFENSE_PURCHASE100) to {FORMATS}.",
        )
    rng = np.random.default_rng(cfg.split_seed)
    x_tr, y_tr, x_te, y_te = _split(cfg, path, rng)
    if cfg.n_features is not None and cfg.n_features != x_tr.shape[1]:
        if cfg.n_features > x_tr.shape[1]:
            raise ConfigError(
                "dataset.n_features",
                f"asks for {cfg.n_features} features but {path} has {x_tr.shape[1]}.",
                "set dataset.n_features=null to keep all of them.",
            )
        keep = frequent_columns(x_tr, cfg.n_features)
        x_tr, x_te = x_tr[:, keep], x_te[:, keep]
    x_tr, y_tr = _subset(x_tr, y_tr, cfg.n_train, rng=rng, key="n_train")
    x_te, y_te = _subset(x_te, y_te, cfg.n_test, rng=rng, key="n_test")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)]
    return make_bundle(
        name="purchase100",
        x_train=tensors[0],
        y_train=tensors[1],
        x_test=tensors[2],
        y_test=tensors[3],
        class_names=[str(c) for c in range(NUM_CLASSES)],
    )
