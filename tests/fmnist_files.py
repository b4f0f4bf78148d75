"""Tiny FashionMNIST files in the official IDX format, for the loader's tests (not a test module)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from gsdefense.data import torchvision_sets

IMAGES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
LABELS = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
FILES = torchvision_sets.FASHION_MNIST.files


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX as on yann.lecun.com: magic 0x0000 0x08 ndim, big-endian uint32 dims, then the raw uint8 values."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, data: bytes, *, gz: bool) -> Path:
    """``data`` at ``path`` (``path.gz``, gzipped, if ``gz``); returns the file written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(path.name + ".gz") if gz else path
    target.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return target


def write_fashion_mnist(
    folder: Path,
    *,
    n_train: int = 20,
    n_test: int = 10,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    gz: bool | tuple[bool, ...] = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The four files, directly in ``folder``; ``gz`` for all, or per file in FILES order. Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10 if train_labels is None else train_labels,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10 if test_labels is None else test_labels,
    }
    flags = gz if isinstance(gz, tuple) else (gz,) * 4
    for name, flag in zip(FILES, flags, strict=True):
        write_file(folder / name, idx_bytes(arrays[name]), gz=flag)
    return arrays


def tiny_counts(monkeypatch: pytest.MonkeyPatch, *, n_train: int = 20, n_test: int = 10) -> None:
    """Let the loader's count check (60,000 / 10,000 in the official files) accept tiny files."""
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_COUNTS", {"train": n_train, "t10k": n_test})


def no_system_copy(monkeypatch: pytest.MonkeyPatch, folder: Path | None = None) -> None:
    """Point the system location (Debian's package) at ``folder`` (None: there is none) and unset the env."""
    monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_SYSTEM_DIR", folder)
    monkeypatch.delenv("GSDEFENSE_DATA_DIR", raising=False)


def tree(root: Path) -> list[str]:
    """Every path under ``root``, relative, sorted (to show nothing was left behind)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
