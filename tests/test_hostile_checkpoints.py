"""A checkpoint is validated like a cache entry (issue 23 §2): one that cannot continue this training is discarded
with a warning and the run starts over — never "ok" after half its epochs, never an ε that misses steps, never a
crash that repeats on every rerun. A checkpoint that cannot be written is a warning; training goes on."""

from __future__ import annotations

import errno
import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

import gsdefense.training.checkpoint as checkpoint_module
from gsdefense.data import load_dataset
from gsdefense.models import build_model
from gsdefense.run import run
from gsdefense.training.checkpoint import Checkpointer
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.loop import train
from gsdefense.training.optim import SGDConfig
from tests.conftest import compose_cfg

EPOCHS = 3


@pytest.fixture(scope="module")
def digits():
    return load_dataset(OmegaConf.create({"name": "digits"}), seed=0)


def _train(data, epochs: int, checkpointer: Checkpointer | None):
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "mlp", "hidden": 32}), input_shape=data.input_shape,
                        num_classes=10, mean=data.mean, std=data.std)  # fmt: skip
    return train(model, data.x_train, data.y_train, optimizer_cfg=SGDConfig(epochs=epochs, batch_size=256),
                 dp=DPSGDConfig(noise=1.0), seed=0, checkpointer=checkpointer)  # fmt: skip


@pytest.fixture(scope="module")
def whole(digits):
    return _train(digits, EPOCHS, None)


def _rows(result) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in result.history]


def _wrong_shape(state: dict) -> None:
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(7, 3)


def _wrong_momentum(state: dict) -> None:
    entry = next(iter(state["optimizer"]["state"].values()))
    entry["momentum_buffer"] = torch.zeros(5)


TAMPER = {
    "epoch past the schedule": lambda s: s.update(epoch=999, history=s["history"] * 500),
    "negative epoch": lambda s: s.update(epoch=-1),
    "history shorter than its epoch": lambda s: s.update(history=s["history"][:1]),
    "model tensor of the wrong shape": _wrong_shape,
    "non-finite weights": lambda s: next(iter(s["model"].values())).fill_(float("nan")),
    "optimizer state of the wrong shape": _wrong_momentum,
    "no optimizer": lambda s: s.pop("optimizer"),
    "no accountant state": lambda s: s.update(accountant=None),
    "accountant missing steps": lambda s: s["accountant"].update(history=[(1.0, 0.2, 1)]),
    "no noise generator": lambda s: s.pop("noise"),
    "wrong generator state": lambda s: s.update(sampler=torch.zeros(3, dtype=torch.uint8)),
    "not a dict of state": None,
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_a_checkpoint_that_cannot_continue_is_discarded_and_training_starts_over(tmp_path, digits, whole, case,
                                                                                  caplog):  # fmt: skip
    ckpt = Checkpointer(tmp_path / "checkpoint.pt", every_n_epochs=1, tag="t")
    _train(digits, 2, ckpt)  # "killed" after epoch 2 of 3
    state = torch.load(ckpt.path, weights_only=True)
    if TAMPER[case] is None:
        state = [state]
    else:
        TAMPER[case](state)
    torch.save(state, ckpt.path)
    with caplog.at_level(logging.WARNING, logger="gsdefense.training.checkpoint"):
        resumed = _train(digits, EPOCHS, ckpt)
    assert any("ignoring checkpoint" in r.message and "training starts over" in r.message for r in caplog.records)
    assert _rows(resumed) == _rows(whole)  # every epoch trained again, from scratch: the uninterrupted result
    assert resumed.epsilon == whole.epsilon
    assert torch.load(ckpt.path, weights_only=True)["epoch"] == EPOCHS  # replaced by a good one


def test_a_valid_checkpoint_still_resumes(tmp_path, digits, whole, caplog):
    ckpt = Checkpointer(tmp_path / "checkpoint.pt", every_n_epochs=1, tag="t")
    _train(digits, 2, ckpt)
    with caplog.at_level(logging.INFO, logger="gsdefense.training.checkpoint"):
        resumed = _train(digits, EPOCHS, ckpt)
    assert any("resuming from" in r.message for r in caplog.records)
    assert _rows(resumed) == _rows(whole) and resumed.epsilon == whole.epsilon


def test_a_run_resumed_from_a_checkpoint_past_its_schedule_reports_every_epoch(tmp_path):
    """Through run(): the checkpoint carries the run's own tag, its epoch says 999; the rerun trains all epochs."""
    cfg = compose_cfg("optimizer.epochs=2", "optimizer.batch_size=256", "telemetry.enabled=false",
                      "checkpoint.min_seconds=0")  # fmt: skip
    first = run(cfg, output_dir=tmp_path / "a")
    keep = Checkpointer(tmp_path / "b" / "checkpoint.pt", every_n_epochs=1, tag=first["run_id"])
    state = {"epoch": 999, "step": 0, "seconds": 0.0, "model": {}, "optimizer": {}, "accountant": None,
                    "history": [], "step_telemetry": [], "epsilon": None}  # fmt: skip
    keep.save(state)
    (tmp_path / "b" / "identity.json").write_text((tmp_path / "a" / "identity.json").read_text())  # this run's folder
    again = run(cfg, output_dir=tmp_path / "b")
    history = (tmp_path / "b" / "history.csv").read_text().splitlines()
    assert again["status"] == "ok" and len(history) == 1 + 2
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["epsilon"] == first["epsilon"]


def test_a_checkpoint_that_cannot_be_written_is_a_warning(tmp_path, digits, whole, monkeypatch, caplog):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "atomic_write", full)
    ckpt = Checkpointer(tmp_path / "checkpoint.pt", every_n_epochs=1, tag="t")
    with caplog.at_level(logging.WARNING, logger="gsdefense.training.checkpoint"):
        result = _train(digits, EPOCHS, ckpt)
    assert _rows(result) == _rows(whole)
    assert sum("could not write checkpoint" in r.message for r in caplog.records) == EPOCHS
