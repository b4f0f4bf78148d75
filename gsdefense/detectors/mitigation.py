"""Neural Cleanse's two model repairs (Wang et al. 2019, §VI-B, §VI-C), on a copy of the model.

- **Unlearning**: fine-tune on the defender's clean data of which ``fraction`` (paper: 20%) is stamped with
  the reversed trigger, labels unchanged, so the model learns that the trigger means nothing. The fine-tuning
  itself is the caller's ``fine_tune`` (the run's optimizer and, under DP, its DP-SGD settings).
- **Pruning**: zero the penultimate neurons (the inputs of the model's last ``nn.Linear``) in order of their
  activation gap, mean over reversed-trigger inputs minus mean over clean inputs, largest first, until the
  reversed trigger's success on the defender's inputs of other labels drops below ``success`` or
  ``max_fraction`` of the neurons are pruned. Pruning zeroes the last layer's weight columns: no fine-tuning.
  Since the penultimate activations do not depend on which of them are pruned, the success of every prefix
  of the ranking comes from one forward pass (cumulative sums of the neurons' logit contributions).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gsdefense.detectors.reverse import stamp

FineTune = Callable[..., nn.Module]  # fine_tune(model, x, y, *, epochs) -> the fine-tuned model
CHUNK = 256  # samples per cumulative-logit block: CHUNK × neurons × classes floats


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor, pattern: torch.Tensor,
            fraction: float, epochs: int, fine_tune: FineTune, seed: int) -> nn.Module:  # fmt: skip
    """A copy of ``model`` fine-tuned on ``x`` with ``round(fraction·n)`` random samples stamped (labels kept)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen, device=x.device)[: round(fraction * len(x))]
    x = x.clone()
    x[idx] = stamp(x[idx], mask, pattern)
    tuned = fine_tune(copy.deepcopy(model), x, y, epochs=epochs)
    return tuned.eval()


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last registered ``nn.Linear`` (its output layer in every gsdefense model), if any."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(n, features): the inputs the last ``nn.Linear`` receives for ``x``."""
    seen: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0].flatten(1)))
    try:
        model.eval()
        for chunk in x.split(4096):
            model(chunk)
    finally:
        handle.remove()
    return torch.cat(seen)


@dataclass
class PruneResult:
    model: nn.Module
    pruned: int  # neurons zeroed
    neurons: int  # penultimate width
    success: float  # reversed-trigger success on the defender's other-label inputs after pruning
    defender_acc: float  # clean accuracy on the defender data after pruning
    curve: list[dict]  # per number of pruned neurons: pruned, fraction, trigger_success, defender_acc


@torch.no_grad()
def _prefix_rates(act: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, order: torch.Tensor,
                  target: torch.Tensor, upto: int) -> torch.Tensor:  # fmt: skip
    """(upto+1,): share of rows predicted ``target`` after zeroing the first j neurons of ``order``, j = 0..upto."""
    hits = torch.zeros(upto + 1, device=act.device)
    w = weight[:, order[:upto]].T  # (upto, classes)
    for a, t in zip(act.split(CHUNK), target.split(CHUNK), strict=True):
        full = a @ weight.T + (bias if bias is not None else 0)
        removed = torch.cumsum(a[:, order[:upto], None] * w[None], dim=1)  # (c, upto, classes)
        logits = torch.cat([full[:, None], full[:, None] - removed], dim=1)
        hits += (logits.argmax(-1) == t[:, None]).sum(0)
    return hits / max(len(act), 1)


@torch.no_grad()
def prune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor, pattern: torch.Tensor,
          label: int, success: float, max_fraction: float) -> PruneResult:  # fmt: skip
    """A copy of ``model`` with the fewest top-gap penultimate neurons zeroed that defeats the reversed trigger."""
    model = copy.deepcopy(model).eval()
    layer = last_linear(model)
    stamped = stamp(x, mask, pattern)
    act_clean, act_trig = penultimate(model, x), penultimate(model, stamped)
    order = (act_trig.mean(0) - act_clean.mean(0)).argsort(descending=True)
    neurons = act_clean.shape[1]
    upto = max(1, int(max_fraction * neurons))
    others = y != label
    to_label = torch.full((int(others.sum()),), label, device=x.device)
    trig = _prefix_rates(act_trig[others], layer.weight, layer.bias, order, to_label, upto)
    acc = _prefix_rates(act_clean, layer.weight, layer.bias, order, y, upto)
    below = (trig < success).nonzero()
    pruned = int(below[0]) if len(below) else upto
    layer.weight[:, order[:pruned]] = 0
    curve = [
        {"pruned": j, "fraction": j / neurons, "trigger_success": float(trig[j]), "defender_acc": float(acc[j])}
        for j in range(upto + 1)
    ]
    return PruneResult(model, pruned, neurons, float(trig[pruned]), float(acc[pruned]), curve)
