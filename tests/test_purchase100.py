"""dataset=purchase100 from small generated files in each supported format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gsdefense.data import load_dataset
from gsdefense.errors import ConfigError, DatasetNotFoundError
from tests.conftest import compose_cfg

N_FEATURES = 12


def _records(n: int, *, seed: int = 0, one_based: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, (n, N_FEATURES)).astype(np.float32)
    y = np.arange(n) % 100  # every class id 0..99 appears once n >= 100
    return x, y + 1 if one_based else y


def _load(path: Path, **keys):
    return load_dataset({"name": "purchase100", "path": str(path), "n_features": None, **keys}, seed=0)


def test_npz_release_round_trips(tmp_path: Path) -> None:
    x_tr, y_tr = _records(120, seed=1)
    x_te, y_te = _records(40, seed=2)
    np.savez(tmp_path / "purchase100.npz", x_tr, y_tr, x_te, y_te)
    b = _load(tmp_path / "purchase100.npz")
    assert b.name == "purchase100" and b.num_classes == 100 and b.input_shape == (N_FEATURES,)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64 and b.box == (0.0, 1.0)
    assert torch.equal(b.x_train, torch.from_numpy(x_tr)) and b.y_train.tolist() == y_tr.tolist()
    assert torch.equal(b.x_test, torch.from_numpy(x_te)) and b.y_test.tolist() == y_te.tolist()
    assert b.input_norm == "none" and b.mean is None  # binary features reach the model as they are (Hong et al.)
    standardized = _load(tmp_path / "purchase100.npz", input_norm="standardize")
    torch.testing.assert_close(standardized.mean, torch.from_numpy(x_tr).mean(0))


def test_npz_with_one_hot_labels(tmp_path: Path) -> None:
    x, y = _records(100)
    np.savez(tmp_path / "p.npz", x, np.eye(100)[y], x[:10], np.eye(100)[y[:10]])
    assert _load(tmp_path / "p.npz").y_train.tolist() == y.tolist()


@pytest.mark.parametrize("header", [False, True])
def test_csv_release_shifts_one_based_labels_and_splits_by_seed(tmp_path: Path, header: bool) -> None:
    x, y = _records(200, one_based=True)
    path = tmp_path / "dataset_purchase"
    lines = [",".join(["label"] + [f"f{i}" for i in range(N_FEATURES)])] if header else []
    lines += [",".join([str(int(label))] + [str(int(v)) for v in row]) for label, row in zip(y, x)]
    path.write_text("\n".join(lines) + "\n")
    b = _load(path, test_fraction=0.25)
    assert len(b.y_train) == 150 and len(b.y_test) == 50
    assert b.y_train.min() >= 0 and b.y_train.max() <= 99 and b.num_classes == 100
    # Every record lands on exactly one side, with its label shifted to 0-based.
    got = sorted(
        (tuple(r), int(c))
        for xs, ys in ((b.x_train, b.y_train), (b.x_test, b.y_test))
        for r, c in zip(xs.int().tolist(), ys.tolist())
    )
    assert got == sorted((tuple(r), int(c) - 1) for r, c in zip(x.astype(int).tolist(), y))
    again = _load(path, test_fraction=0.25)
    assert torch.equal(again.y_test, b.y_test)  # the split is fixed by split_seed
    other = _load(path, test_fraction=0.25, split_seed=1)
    assert not torch.equal(other.x_test, b.x_test)


def test_csv_with_zero_based_labels_is_kept_and_subsets_apply(tmp_path: Path) -> None:
    x, y = _records(200)
    path = tmp_path / "p.csv"
    np.savetxt(path, np.column_stack([y, x]), fmt="%d", delimiter=",")
    b = _load(path, test_fraction=0.5, n_train=30, n_test=20)
    assert len(b.y_train) == 30 and len(b.y_test) == 20
    assert 0 in torch.cat([_load(path, test_fraction=0.5).y_train, _load(path, test_fraction=0.5).y_test]).tolist()
    with pytest.raises(ConfigError) as err:
        _load(path, test_fraction=0.5, n_train=1000)
    assert err.value.field == "dataset.n_train"


def test_missing_file_says_which_formats_are_expected(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        _load(tmp_path / "nope.npz")
    msg = str(err.value)
    assert err.value.field == "dataset.path" and str(tmp_path / "nope.npz") in msg
    assert "arr_0" in msg and "CSV" in msg and "GSDEFENSE_PURCHASE100" in msg


@pytest.mark.parametrize(
    ("content", "field"),
    [("npz_missing_arrays", "dataset.path"), ("labels_out_of_range", "dataset.path"), ("non_binary", "dataset.path")],
)
def test_malformed_files_are_config_errors(tmp_path: Path, content: str, field: str) -> None:
    x, y = _records(100)
    if content == "npz_missing_arrays":
        path = tmp_path / "p.npz"
        np.savez(path, x, y)
    else:
        if content == "labels_out_of_range":
            y = y + 5  # 0..99 -> 5..104: no class 0, and 104 > 100 after the shift
        else:
            x = x * 3
        path = tmp_path / "p.csv"
        np.savetxt(path, np.column_stack([y, x]), fmt="%d", delimiter=",")
    with pytest.raises(ConfigError) as err:
        _load(path)
    assert err.value.field == field


def test_config_group_reads_the_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _records(100)
    np.savez(tmp_path / "p.npz", x, y, x[:20], y[:20])
    monkeypatch.setenv("GSDEFENSE_PURCHASE100", str(tmp_path / "p.npz"))
    cfg = compose_cfg("dataset=purchase100", "dataset.n_features=null")
    assert cfg.dataset.path == str(tmp_path / "p.npz")
    assert len(load_dataset(cfg.dataset, seed=0).y_test) == 20


def test_default_keeps_the_100_most_frequent_of_600_features(tmp_path: Path) -> None:
    # The common release has 600 binary features; Hong et al.'s records have 100 (the most purchased items).
    rng = np.random.default_rng(3)
    rates = rng.permutation(np.linspace(0.01, 0.6, 600))
    x = (rng.random((400, 600)) < rates).astype(np.float32)
    y = np.arange(400) % 100 + 1
    path = tmp_path / "dataset_purchase"
    np.savetxt(path, np.column_stack([y, x]), fmt="%d", delimiter=",")
    b = load_dataset({"name": "purchase100", "path": str(path), "test_fraction": 0.25}, seed=0)
    assert b.input_shape == (100,)
    full = _load(path, test_fraction=0.25)
    counts = full.x_train.sum(0)
    kept = [int(c) for c in range(600) if any(torch.equal(full.x_train[:, c], b.x_train[:, j]) for j in range(100))]
    assert len(kept) == 100 and counts[kept].min() >= counts.topk(100).values.min()
    assert torch.equal(b.x_train, full.x_train[:, kept]) and torch.equal(b.x_test, full.x_test[:, kept])
    # A file that already has exactly 100 features is used as it is; fewer than asked is an error.
    np.savez(tmp_path / "hong.npz", x[:300, :100], y[:300] - 1, x[300:, :100], y[300:] - 1)
    hong = load_dataset({"name": "purchase100", "path": str(tmp_path / "hong.npz")}, seed=0)
    assert torch.equal(hong.x_train, torch.from_numpy(x[:300, :100]))
    with pytest.raises(ConfigError) as err:
        load_dataset({"name": "purchase100", "path": str(tmp_path / "hong.npz"), "n_features": 101}, seed=0)
    assert err.value.field == "dataset.n_features" and "n_features=null" in str(err.value)


def test_hong_sizes_10k_train_10k_test(tmp_path: Path) -> None:
    x, y = _records(25_000, seed=4)
    np.savez(tmp_path / "p.npz", x[:15_000], y[:15_000], x[15_000:], y[15_000:])
    b = _load(tmp_path / "p.npz", n_train=10_000, n_test=10_000)
    assert len(b.y_train) == 10_000 and len(b.y_test) == 10_000
