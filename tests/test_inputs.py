"""User-supplied files: unreadable, wrong format, empty or inconsistent ones give one line naming the field.

Trigger images, Purchase-100 files and FashionMNIST/CIFAR-10 files, in-process through the loaders and attacks;
a few through the real CLI (exit 2, one ``error:`` line on stderr, no traceback). Also: cached triggers and
poisons that do not fit are recomputed, never used.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from gsdefense.attacks import RunContext, build_attack
from gsdefense.data import load_dataset, torchvision_sets
from gsdefense.errors import ConfigError, DatasetNotFoundError
from gsdefense.training.optim import OPTIMIZERS
from tests.conftest import run_cli
from tests.fmnist_files import idx_bytes, no_system_copy, tiny_counts, write_fashion_mnist


@pytest.fixture(scope="module")
def digits():
    return load_dataset(OmegaConf.create({"name": "digits"}), seed=0)


def _one_line_error(call, *, field: str, cls: type[ConfigError] = ConfigError) -> str:
    """Run ``call``; it must raise ``cls`` naming ``field``, with a one-line message. Returns the message."""
    with pytest.raises(cls) as err:
        call()
    msg = str(err.value)
    assert err.value.field == field and msg.startswith(f"{field}: ")
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# --- trigger images (attack.trigger_path) ---------------------------------------------------------------------------


def _png_bytes(size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("text", "not a readable image"),
        ("truncated_png", "not a readable image"),
        ("directory", "is a directory"),
        ("empty", "empty (0 bytes)"),
        ("missing", "no image file"),
    ],
)
def test_bad_trigger_images(tmp_path: Path, digits, kind: str, expect: str) -> None:
    path = tmp_path / "trigger.png"
    if kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated_png":
        path.write_bytes(_png_bytes(64)[:200])
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    attack = build_attack(OmegaConf.create({"name": "blend", "trigger_path": str(path)}))
    msg = _one_line_error(lambda: attack.validate(digits), field="attack.trigger_path")
    assert expect in msg and "Fix:" in msg


def test_a_valid_png_trigger_still_loads(tmp_path: Path, digits) -> None:
    (tmp_path / "t.png").write_bytes(_png_bytes(16))
    attack = build_attack(OmegaConf.create({"name": "blend", "trigger_path": str(tmp_path / "t.png")}))
    attack.validate(digits)
    assert attack.pattern.shape == (1, 8, 8) and 0 <= attack.pattern.min() <= attack.pattern.max() <= 1


# --- Purchase-100 files (dataset.path) -------------------------------------------------------------------------------


def _records(n: int, d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, (n, d)).astype(np.float32), np.arange(n) % 100


def _purchase(path: Path, **keys):
    return load_dataset({"name": "purchase100", "path": str(path), "n_features": None, **keys}, seed=0)


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _npz_case(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "p.npz"
    x, y = _records(120)
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        np.savez(path, x, y, x, y)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "pickled":
        objects = np.empty(120, dtype=object)
        objects[:] = [list(row) for row in x]
        np.savez(path, objects, y, x, y)
    elif kind == "length_mismatch":
        np.savez(path, x, y[:100], x, y)
    elif kind == "nan":
        x[3, 4] = np.nan
        np.savez(path, x, y, x, y)
    elif kind == "strings":
        np.savez(path, x.astype(str), y, x, y)
    elif kind == "bare_npy":
        np.save(tmp_path / "p.npy", x)
        (tmp_path / "p.npy").rename(path)
    elif kind == "empty_test":
        np.savez(path, x, y, x[:0], y[:0])
    return path


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("garbage", "not an .npz archive (nor an .npy array)"),
        ("truncated", "not a readable .npz"),
        ("pickled", "pickled (object) data"),
        ("length_mismatch", "120 train records but 100 train labels"),
        ("nan", "NaN or infinite train features"),
        ("strings", "not numbers"),
        ("bare_npy", "not an .npz archive"),
        ("empty_test", "no test records"),
    ],
)
def test_bad_purchase_npz(tmp_path: Path, kind: str, expect: str) -> None:
    path = _npz_case(tmp_path, kind)
    msg = _one_line_error(lambda: _purchase(path), field="dataset.path")
    assert expect in msg and str(path) in msg


@pytest.mark.parametrize(
    ("lines", "expect"),
    [
        (["label,f0,f1,f2"], "header line but no records"),
        (["1,0,1,0", "2,1,0,1,1,0", "3,0,0,1"], "not a readable CSV"),  # a row with extra fields
        (["1,0,1,0", "2,1,0", "3,0,0,1"], "missing values (line 2"),  # a short row
        (["1,0,1,0", "2,nan,0,1", "3,0,0,1"], "missing values (line 2"),
        (["1,0,1,0", "2,inf,0,1", "3,0,0,1"], "NaN or infinite record features"),
        (["1,0,1,0", "2,yes,0,1", "3,0,0,1"], "non-numeric values"),
        (["1.5,0,1,0", "2,1,0,1", "3,0,0,1"], "non-integer or missing record labels"),
    ],
)
def test_bad_purchase_csv(tmp_path: Path, lines: list[str], expect: str) -> None:
    path = _write_csv(tmp_path / "dataset_purchase", lines)
    msg = _one_line_error(lambda: _purchase(path, test_fraction=0.4), field="dataset.path")
    assert expect in msg


def test_empty_and_binary_csv_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert "is empty" in _one_line_error(lambda: _purchase(empty), field="dataset.path")
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 16)
    _one_line_error(lambda: _purchase(garbage), field="dataset.path")


def test_purchase_path_that_is_a_directory(tmp_path: Path) -> None:
    msg = _one_line_error(lambda: _purchase(tmp_path), field="dataset.path", cls=DatasetNotFoundError)
    assert "is a directory" in msg and "GSDEFENSE_PURCHASE100" in msg


# --- FashionMNIST / CIFAR-10 files (dataset.data_dir; every layout and malformed IDX case: test_fashion_mnist.py) ---


def _fashion(root: Path, monkeypatch: pytest.MonkeyPatch, *, n_train: int = 20, n_test: int = 10) -> Path:
    no_system_copy(monkeypatch)
    tiny_counts(monkeypatch, n_train=n_train, n_test=n_test)
    raw = root / "FashionMNIST" / "raw"
    write_fashion_mnist(raw, n_train=n_train, n_test=n_test)
    return raw


def _fmnist(root: Path, **keys):
    return load_dataset({"name": "fashion_mnist", "data_dir": str(root), "download": False, **keys}, seed=0)


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "count_mismatch", "bad_labels"])
def test_bad_fashion_mnist_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    raw = _fashion(tmp_path, monkeypatch)
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    bad = images
    if kind == "empty":
        images.write_bytes(b"")
    elif kind == "truncated":
        images.write_bytes(images.read_bytes()[: 16 + 784 * 5 + 100])
    elif kind == "garbage":
        images.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "count_mismatch":
        labels.write_bytes(idx_bytes(np.zeros(19, dtype=np.uint8)))
    else:
        labels.write_bytes(idx_bytes(np.full(20, 12, dtype=np.uint8)))
        bad = labels
    msg = _one_line_error(lambda: _fmnist(tmp_path), field="dataset.data_dir")
    assert msg.startswith(f"dataset.data_dir: {bad}: ") and "intact copy" in msg
    expected = {
        "empty": "0 bytes long, too short for an IDX header",
        "truncated": "declares 20×28×28 values (15680 bytes) but holds 4020: truncated",
        "garbage": "has magic number 0x",
        "count_mismatch": "20 images but train-labels-idx1-ubyte has 19 labels",
        "bad_labels": "labels outside 0..9 (found 12)",
    }[kind]
    assert expected in msg


def _cifar(root: Path, *, corrupt: str | None = None) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    if corrupt == "truncated":
        (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:500])
    elif corrupt == "garbage":
        (folder / "test_batch").write_bytes(b"\x00garbage" * 100)
    elif corrupt == "wrong_keys":
        (folder / "data_batch_1").write_bytes(pickle.dumps({"pixels": []}))
    elif corrupt == "bad_labels":
        (folder / "data_batch_4").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    elif corrupt == "count_mismatch":
        (folder / "data_batch_5").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}))


@pytest.mark.parametrize(
    ("corrupt", "file", "expect"),
    [
        ("truncated", "data_batch_3", "not a CIFAR-10 pickle"),
        ("garbage", "test_batch", "not a CIFAR-10 pickle"),
        ("wrong_keys", "data_batch_1", "no 'data' entry"),
        ("bad_labels", "data_batch_4", "labels outside 0..9"),
        ("count_mismatch", "data_batch_5", "2 images but 1 integer labels"),
    ],
)
def test_bad_cifar_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: str, file: str, expect: str
) -> None:
    # Tiny files cannot match the real md5s: the md5 table is emptied, so the reader meets the corrupt bytes (as it
    # would with a real file whose md5 check was skipped).
    monkeypatch.setattr(torchvision_sets, "CIFAR10_MD5", {})
    _cifar(tmp_path, corrupt=corrupt)
    load = lambda: load_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": False}, seed=0)  # noqa: E731
    msg = _one_line_error(load, field="dataset.data_dir")
    assert msg.startswith(f"dataset.data_dir: {tmp_path / 'cifar-10-batches-py' / file}: ") and expect in msg


def test_cifar_md5_mismatch_is_reported_as_a_corrupt_file(tmp_path: Path) -> None:
    _cifar(tmp_path)  # every file exists, none has the real md5
    load = lambda: load_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": True}, seed=0)  # noqa: E731
    msg = _one_line_error(load, field="dataset.data_dir")
    assert "data_batch_1: fails its md5 check" in msg and "not found" not in msg


def test_failed_download_says_so_and_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist as tv_mnist

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    no_system_copy(monkeypatch)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    load = lambda: _fmnist(tmp_path / "data", download=True)  # noqa: E731
    msg = _one_line_error(load, field="dataset.data_dir", cls=DatasetNotFoundError)
    folder = str(tmp_path / "data" / "FashionMNIST" / "raw")
    assert f"downloading them into {folder} failed" in msg and "Name or service not known" in msg
    assert "no internet access?" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert f"into {folder} (or point" in msg and "GSDEFENSE_DATA_DIR" in msg
    assert "set dataset.download=true" not in msg  # it already is
    assert not (tmp_path / "data").exists()  # a failed attempt leaves no empty data/FashionMNIST/raw behind


# --- cached triggers and poisons ------------------------------------------------------------------------------------


def _tamper(cache: Path, kind: str, change) -> None:
    """Rewrite every cached ``kind`` entry with ``change(tensors)``, keeping its stored spec."""
    files = sorted((cache / kind).glob("*.pt"))
    assert files
    for file in files:
        entry = torch.load(file, weights_only=True)
        entry["tensors"] = change(entry["tensors"])
        torch.save(entry, file)


def test_cached_narcissus_trigger_of_the_wrong_shape_is_recomputed(tmp_path: Path, digits, caplog) -> None:
    ctx = RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path / "cache", model_name="lr",
                     model_node=OmegaConf.create({"name": "lr"}),
                     optimizer=OPTIMIZERS.config(OmegaConf.create({"name": "sgd", "epochs": 1})))  # fmt: skip

    def attack():
        a = build_attack(OmegaConf.create({"name": "narcissus", "trigger_steps": 3}))
        a.validate(digits, context=ctx)
        a.poison(digits, generator=torch.Generator().manual_seed(0), context=ctx)
        return a

    first = attack()
    _tamper(ctx.cache_dir, "narcissus_trigger", lambda t: {"delta": t["delta"][..., :4]})
    second = attack()
    assert second.cache_hit is False and torch.equal(second.delta, first.delta)
    _tamper(ctx.cache_dir, "narcissus_trigger", lambda t: {"delta": t["delta"] * 100})  # outside the ε ball
    assert attack().cache_hit is False
    assert attack().cache_hit is True
    assert "cannot be used" in caplog.text


def test_cached_poisons_of_the_wrong_shape_are_recomputed(tmp_path: Path, digits, monkeypatch) -> None:
    from gsdefense.attacks import frogs_craft as fc
    from gsdefense.training.loop import TrainResult, train
    from gsdefense.training.optim import SGDConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    model = train(model, digits.x_train, digits.y_train, optimizer_cfg=SGDConfig(epochs=2), dp=None, seed=0).model

    class Trials:
        acc_ref = 0.9

        def pretrained_model(self):
            return model

        def retrain(self, x, y, *, evaluate=None, desc=""):
            return TrainResult(model=model, history=[{"epoch": 1, "clean_acc": 0.9, "target_pred": 0}])

    ctx = RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path / "cache", model_name="lr",
                     scenario="retrain")  # fmt: skip
    attack = build_attack(OmegaConf.create({"name": "poison_frogs", "n_targets": 1, "max_poisons": 1,
                                            "max_iters": 5, "max_feature_distance": None}))  # fmt: skip
    attack.evaluate(data=digits, context=ctx, trials=Trials(), output_dir=tmp_path)
    crafted = []
    real = fc.craft
    monkeypatch.setattr(fc, "craft", lambda *a, **k: crafted.append(1) or real(*a, **k))
    _tamper(ctx.cache_dir, "poison_frogs", lambda t: {**t, "poisons": t["poisons"][:3]})
    attack.evaluate(data=digits, context=ctx, trials=Trials(), output_dir=tmp_path)
    assert crafted == [1]
    _tamper(ctx.cache_dir, "poison_frogs", lambda t: {**t, "poisons": t["poisons"] + 5})  # outside the box
    attack.evaluate(data=digits, context=ctx, trials=Trials(), output_dir=tmp_path)
    assert crafted == [1, 1]
    attack.evaluate(data=digits, context=ctx, trials=Trials(), output_dir=tmp_path)
    assert crafted == [1, 1]  # a valid entry is used


# --- through the real CLI -------------------------------------------------------------------------------------------


def _cli_error(tmp_path: Path, *args: str, field: str) -> str:
    proc = run_cli(*args, "optimizer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_garbage_trigger_image(tmp_path: Path) -> None:
    (tmp_path / "kitty.png").write_bytes(b"GIF89a but not really" * 10)
    line = _cli_error(tmp_path, "attack=blend", f"attack.trigger_path={tmp_path / 'kitty.png'}",
                      field="attack.trigger_path")  # fmt: skip
    assert "not a readable image" in line


@pytest.mark.slow
def test_cli_pickled_purchase_npz(tmp_path: Path) -> None:
    path = _npz_case(tmp_path, "pickled")
    line = _cli_error(tmp_path, "dataset=purchase100", f"dataset.path={path}", "model=lr", "attack=none",
                      field="dataset.path")  # fmt: skip
    assert "allow_pickle=False" in line


@pytest.mark.slow
def test_cli_truncated_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _fashion(tmp_path / "data", monkeypatch)
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:999])
    line = _cli_error(tmp_path, "dataset=fashion_mnist", f"dataset.data_dir={tmp_path / 'data'}",
                      "dataset.download=false", "model=lr", field="dataset.data_dir")  # fmt: skip
    assert f"{raw / 'train-images-idx3-ubyte'}: not a FashionMNIST image file" in line and "truncated" in line
