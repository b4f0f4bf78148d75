"""SGD and Adam on stacked parameters (M, …), each member with its own learning rate.

The updates are torch.optim's, written out with a per-member lr so one call steps
every member of a fused grid (``torch.optim`` takes one scalar lr per group):

    SGD:  d = g + λp;  v ← μv + d (v₁ = d);  p ← p − η_m·v
    Adam: d = g + λp;  m ← β₁m + (1−β₁)d;  v ← β₂v + (1−β₂)d²;
          p ← p − η_m/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)
"""

from __future__ import annotations

import math

import torch

from gsdefense.training.optim import AdamConfig, SGDConfig

ADAM_EPS = 1e-8  # torch.optim.Adam's default, which the separate runs use


class StackedOptimizer:
    def __init__(self, params: list[torch.Tensor], cfgs: list[SGDConfig | AdamConfig]) -> None:
        self.params, self.cfg = params, cfgs[0]
        self.lr = torch.tensor([c.lr for c in cfgs], dtype=params[0].dtype, device=params[0].device)
        self.steps = 0
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in params]

    def _lr(self, p: torch.Tensor) -> torch.Tensor:
        return self.lr.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.steps += 1
        cfg = self.cfg
        for p, g, state in zip(self.params, grads, self.state):
            d = g.add(p, alpha=cfg.weight_decay) if cfg.weight_decay else g
            if isinstance(cfg, SGDConfig):
                if cfg.momentum:
                    if "momentum" in state:
                        d = state["momentum"].mul_(cfg.momentum).add_(d)
                    else:
                        d = state["momentum"] = d.clone()
                p.sub_(self._lr(p) * d)
            else:
                m = state.setdefault("exp_avg", torch.zeros_like(p)).lerp_(d, 1 - cfg.beta1)
                v = state.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(cfg.beta2)
                v.addcmul_(d, d, value=1 - cfg.beta2)
                bias1, bias2 = 1 - cfg.beta1**self.steps, 1 - cfg.beta2**self.steps
                denom = (v.sqrt() / math.sqrt(bias2)).add_(ADAM_EPS)
                p.sub_(self._lr(p) / bias1 * m / denom)

    def member_state(self, k: int) -> dict:
        return {"steps": self.steps, "state": [{n: t[k].clone() for n, t in s.items()} for s in self.state]}

    def load_member_states(self, states: list[dict]) -> None:
        self.steps = states[0]["steps"]
        for i, s in enumerate(self.state):
            s.clear()
            for name in states[0]["state"][i]:
                s[name] = torch.stack([st["state"][i][name] for st in states]).to(self.params[i].device)
