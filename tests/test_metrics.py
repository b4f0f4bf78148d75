"""RAD and ASR follow their definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gsdefense import metrics as M
from gsdefense.attacks.base import Attack


def test_rad_formula():
    assert M.rad(0.9, 0.72) == pytest.approx(0.2)
    assert M.rad(0.8, 0.8) == 0.0
    assert M.rad(0.5, 0.6) == pytest.approx(-0.2)  # a poisoned model may beat its reference
    assert M.rad(None, 0.5) is None and M.rad(0.0, 0.5) is None and M.rad(0.5, None) is None


class _Flag(Attack):
    """Trigger: set feature 0 to 1. Target class 1."""

    is_backdoor = True
    target_class = 1

    def trigger(self, x):
        x = x.clone()
        x[:, 0] = 1.0
        return x


class _Model(nn.Module):
    """Predicts class x[1] unless the trigger is set and x[2] > 0, then class 1."""

    def forward(self, x):
        pred = torch.where((x[:, 0] == 1) & (x[:, 2] > 0), torch.ones_like(x[:, 1]), x[:, 1]).long()
        return nn.functional.one_hot(pred, 3).float()


def test_asr_counts_only_non_target_test_images_and_robust_acc_the_rest():
    # labels: 4 of class 0, 3 of class 2, 3 of the target class 1
    y = torch.tensor([0, 0, 0, 0, 2, 2, 2, 1, 1, 1])
    x = torch.zeros(10, 3)
    x[:, 1] = y.float()
    x[[0, 1, 4], 2] = 1.0  # three non-target images flip under the trigger
    x[[7, 8], 2] = 1.0  # target-class images must not count, whatever they do
    attack = _Flag()
    triggered = M.backdoor_test_set(attack, x, y)
    out = M.evaluate(_Model(), x, y, attack=attack, triggered=triggered)
    assert out["clean_acc"] == 1.0
    assert out["asr"] == pytest.approx(3 / 7)  # denominator: the 7 non-target images
    assert out["robust_acc"] == pytest.approx(4 / 7)
    assert out["target_class_acc"] == 1.0


def test_no_backdoor_no_asr():
    y = torch.tensor([0, 1, 2])
    x = torch.zeros(3, 3)
    x[:, 1] = y.float()
    attack = _Flag()
    out = M.evaluate(_Model(), x, y, attack=attack, triggered=None)
    assert out["asr"] is None and out["robust_acc"] is None


def test_mean_loss_empty_is_none():
    assert M.mean_loss(_Model(), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) is None
