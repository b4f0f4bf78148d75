"""DP-SGD without Opacus' hooks: the same update, computed faster (``dp.grad_sample_mode``).

Per step, on a Poisson batch B drawn with rate q (σ = noise, C = clip):

    g = ( Σ_{i∈B} g_i · min(1, C / (‖g_i‖ + 1e-6))  +  N(0, (σ·C)² I) ) / (q·n)

then the plain optimizer's step. The clipped sum comes from
``gsdefense.training.per_sample`` (``vmap`` or book-keeping ``bk``); the noise is
drawn per parameter, in ``model.parameters()`` order, with the same
``torch.normal`` calls Opacus makes, so the same generator gives the same noise;
and each step is booked with Opacus' accountant as ``(σ, q)``, so ε is Opacus' ε.

``gsdefense.training.engine`` picks the engine (``auto``: ``bk`` when every trainable
layer is a Linear, Conv2d or GroupNorm, else ``vmap``; measured on CPU, see
``benchmarks/speed.py``), validates the model for DP, and gives q. ``bk`` on a chain model
(``model=lr|mlp``) runs its closed form (``training.chain``): no autograd, the first layer's input
norms cached per dataset (``bind``), and each parameter's clipped sum written by one GEMM into the
noise drawn for it (persistent buffers that become ``.grad``).
"""

from __future__ import annotations

import torch
from opacus import PrivacyEngine
from torch import nn

from gsdefense.training.accounting import PrivateTraining
from gsdefense.training.adaptive import NoiseTracker
from gsdefense.training.chain import Chain
from gsdefense.training.engine import poisson_rate
from gsdefense.training.optim import plain_sgd_lr
from gsdefense.training.per_sample import BookKeepingClippedSum, VmapClippedSum

CHAIN = True  # bk on chain models runs training.chain's closed form; False: the generic engine (tests, benchmarks)


class FastDPOptimizer:
    """Clip, noise and scale per-sample gradients, then step the wrapped optimizer.

    Mirrors the parts of Opacus' ``DPOptimizer`` the training loop uses
    (``noise_multiplier``, ``max_grad_norm``, ``expected_batch_size``, state dicts).
    With ``adaptive``, the noise multiplier follows Hong et al. §7.2 as in
    ``AdaptiveDPOptimizer``: σ_e = σ · mean_{epoch e-1} min(‖g_i‖, C) / C.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        model: nn.Module,
        mode: str,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator,
        accountant,
        sample_rate: float,
        adaptive: bool = False,
    ) -> None:
        self.original_optimizer = optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.mode = mode
        self.chain = Chain.of(model) if mode == "bk" and CHAIN else None
        self.clipped_sum = BookKeepingClippedSum(model) if mode == "bk" else VmapClippedSum(model)
        self.grads = [torch.zeros_like(p) for p in self.params]  # noise + clipped sum, handed over as .grad
        self.direct_lr = plain_sgd_lr(optimizer)  # plain SGD: p ← p − lr·g applied here, without .grad
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.expected_batch_size, self.generator = expected_batch_size, generator
        self.accountant, self.sample_rate = accountant, sample_rate
        self.adaptive = adaptive
        self.tracker = NoiseTracker(base_noise=noise_multiplier, clip=max_grad_norm)
        self.last_norms: torch.Tensor | None = None

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.max_grad_norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.original_optimizer.load_state_dict(state)

    def bind(self, x: torch.Tensor) -> None:
        """Cache what a step may reuse of the dataset ``x`` (a chain model's first-layer input norms)."""
        if self.chain is not None:
            self.chain.bind(x)

    def private_step(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, *, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One DP-SGD step on the batch ``(x, y)``; returns the batch's summed (detached) loss.

        ``weight`` marks a fixed-shape batch's real rows (1) and padding (0, contributing exactly nothing);
        ``rows``: the batch's row indices in the dataset given to ``bind`` (lets a step reuse cached values).
        """
        clip, scale = self.max_grad_norm, 1.0 / self.expected_batch_size
        std = self.noise_multiplier * clip * scale  # (σC·z)/(q·n), drawn as σC/(q·n)·z
        grads, noisy = self.grads, std > 0
        if noisy:  # per parameter, in model.parameters() order: Opacus' torch.normal calls, the same values
            for g in grads:
                g.normal_(mean=0.0, std=std, generator=self.generator)
        elif not len(x):
            for g in grads:
                g.zero_()
        if len(x) and self.chain is not None:
            loss_sum, norms = self.chain.clipped_sums(x, y, grads, clip=clip, scale=scale, weight=weight, rows=rows,
                                                      accumulate=noisy)  # fmt: skip
        elif len(x):
            sums, loss_sum, norms = self.clipped_sum(x, y, clip=clip, scale=scale, weight=weight)
            for g, s in zip(grads, sums):
                if noisy:
                    g.add_(s.view_as(g))
                else:
                    g.copy_(s.view_as(g))
        else:  # an empty Poisson batch is still a step: the update is pure noise
            loss_sum, norms = torch.zeros((), device=x.device), None
        # whole-model per-sample norms this step clipped with (telemetry reads them; empty for an empty batch)
        self.last_norms = norms.detach() if norms is not None else x.new_zeros(0)
        if self.adaptive and norms is not None:
            self.tracker.record(norms, weight)
        if self.direct_lr is not None:
            with torch.no_grad():
                for p, g in zip(self.params, grads):
                    p.add_(g, alpha=-self.direct_lr)
        else:
            for p, g in zip(self.params, grads):
                p.grad = g
            self.original_optimizer.step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return loss_sum

    def end_epoch(self) -> None:
        """Adaptive only: next epoch's σ = base σ × this epoch's mean clipped norm / C."""
        if self.adaptive:
            self.noise_multiplier = self.tracker.end_epoch(self.noise_multiplier)

    def extra_state(self) -> dict:
        return self.tracker.state(self.noise_multiplier)

    def load_extra_state(self, state: dict) -> None:
        self.noise_multiplier = self.tracker.load(state)


def make_fast_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    cfg,
    mode: str,
    n_train: int,
    batch_size: int,
    noise_generator: torch.Generator,
    adaptive: bool,
) -> PrivateTraining:
    """The hook-free twin of ``dp.make_private`` for ``mode`` (``bk`` or ``vmap``, as ``engine.resolve_engine``
    chose): same q, same accountant, no hooks."""
    sample_rate, expected_batch_size = poisson_rate(n_train, batch_size)
    engine = PrivacyEngine(accountant=cfg.accountant)
    fast = FastDPOptimizer(
        optimizer,
        model=model,
        mode=mode,
        noise_multiplier=cfg.noise,
        max_grad_norm=cfg.clip,
        expected_batch_size=expected_batch_size,
        generator=noise_generator,
        accountant=engine.accountant,
        sample_rate=sample_rate,
        adaptive=adaptive,
    )
    return PrivateTraining(
        module=model, optimizer=fast, engine=engine, sample_rate=sample_rate, delta=cfg.delta, adaptive=adaptive
    )
