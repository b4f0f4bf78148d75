"""The ``dp`` config group: DP-SGD through Opacus, or none.

DP-SGD (Abadi et al. 2016; Hong et al. Alg. 1) per step, on a Poisson batch B
drawn with rate q:

    g = ( Σ_{i∈B} g_i · min(1, C / ‖g_i‖)  +  N(0, (σ·C)² I) ) / (q·n)

with ``C = clip`` and ``σ = noise``. Opacus' ``PrivacyEngine.make_private``
builds the per-sample-gradient model, the clipping/noising optimizer and the
accountant; with ``optimizer=adam`` the same wrapper gives DP-Adam.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from torch.utils.data import DataLoader, TensorDataset

from gsdefense.errors import ConfigError
from gsdefense.registry import Registry
from gsdefense.training.adaptive import AdaptiveDPConfig, AdaptiveDPOptimizer
from gsdefense.training.fast_dp import FAST_MODES, make_fast_private

# Opacus' full backward hooks fire on the first layer although inputs need no grad: harmless, and noisy.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Secure RNG turned off")

DP: Registry[object] = Registry("dp")
ACCOUNTANTS = ("rdp", "prv", "gdp")
OPACUS_MODES = ("hooks", "functorch")
GRAD_SAMPLE_MODES = (*FAST_MODES, *OPACUS_MODES)


@dataclass
class NoDPConfig:
    name: str = "none"


@dataclass
class DPSGDConfig:
    name: str = "dpsgd"
    clip: float = 1.0
    noise: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    grad_sample_mode: str = "hooks"


@DP.register("none", NoDPConfig)
def _no_dp(cfg: NoDPConfig) -> None:
    return None


@DP.register("adaptive", AdaptiveDPConfig)
@DP.register("dpsgd", DPSGDConfig)
def _dpsgd(cfg: DPSGDConfig) -> DPSGDConfig:
    if not cfg.clip > 0:
        raise ConfigError(
            "dp.clip", f"must be > 0 (got {cfg.clip}).", "pass the max per-sample gradient norm, e.g. 1.0."
        )
    if cfg.noise < 0:
        raise ConfigError("dp.noise", f"must be >= 0 (got {cfg.noise}).", "pass the noise multiplier σ, e.g. 1.0.")
    if not 0 < cfg.delta < 1:
        raise ConfigError("dp.delta", f"must be in (0, 1) (got {cfg.delta}).")
    if cfg.accountant not in ACCOUNTANTS:
        raise ConfigError("dp.accountant", f"unknown accountant {cfg.accountant!r}.", f"use one of {ACCOUNTANTS}.")
    if cfg.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError("dp.grad_sample_mode", f"unknown mode {cfg.grad_sample_mode!r}.", f"use {GRAD_SAMPLE_MODES}.")
    return cfg


def dp_config(node) -> DPSGDConfig | AdaptiveDPConfig | None:
    """The validated DP settings, or None for vanilla training."""
    return DP.builder(node)(DP.config(node))


@dataclass
class PrivateTraining:
    """What ``make_private`` hands the training loop."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    engine: PrivacyEngine
    sample_rate: float
    delta: float
    adaptive: bool = False

    def epsilon(self) -> float | None:
        if self.adaptive:
            return None
        if isinstance(self.engine.accountant, RDPAccountant):
            return rdp_epsilon(self.engine.accountant.history, delta=self.delta)
        return float(self.engine.get_epsilon(self.delta))


@functools.lru_cache(maxsize=1024)
def _rdp_one_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    return rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )


def rdp_epsilon(history: list, *, delta: float) -> float:
    """Opacus' RDP ε, bit for bit, with the per-step RDP curve of each (σ, q) cached.

    Opacus recomputes RDP(α) of the subsampled Gaussian for every α on every call (~0.1 s);
    RDP composes additively, RDP_k(α) = k · RDP_1(α), which is exactly how Opacus scales it.
    """
    if not history:
        return 0.0
    rdp = sum([_rdp_one_step(q, sigma) * steps for sigma, q, steps in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: DPSGDConfig | AdaptiveDPConfig,
    n_train: int,
    batch_size: int,
    noise_generator: torch.Generator,
) -> PrivateTraining:
    """Wrap model and optimizer for DP-SGD with Poisson rate ``q = 1/ceil(n/batch_size)``.

    Opacus wants a DataLoader only to read ``q`` and the expected batch size; the
    loop samples its Poisson batches on the device at that same rate instead of
    iterating Opacus' per-sample Python loader.
    """
    if cfg.grad_sample_mode not in OPACUS_MODES:
        raise ValueError(f"make_private is the Opacus route ({OPACUS_MODES}); use private_training for {FAST_MODES}")
    engine = PrivacyEngine(accountant=cfg.accountant)
    index_loader = DataLoader(TensorDataset(torch.arange(n_train)), batch_size=batch_size)
    module, dp_optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=index_loader,
        noise_multiplier=cfg.noise,
        max_grad_norm=cfg.clip,
        poisson_sampling=True,
        noise_generator=noise_generator,
        grad_sample_mode=cfg.grad_sample_mode,
    )
    sample_rate = 1.0 / len(loader)
    adaptive = isinstance(cfg, AdaptiveDPConfig)
    if adaptive:
        # Same clipping and noise machinery, only the noise std changes per epoch.
        dp_optimizer = AdaptiveDPOptimizer(
            dp_optimizer.original_optimizer,
            noise_multiplier=cfg.noise,
            max_grad_norm=cfg.clip,
            expected_batch_size=dp_optimizer.expected_batch_size,
            generator=noise_generator,
            base_noise=cfg.noise,
        )
        dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return PrivateTraining(
        module=module,
        optimizer=dp_optimizer,
        engine=engine,
        sample_rate=sample_rate,
        delta=cfg.delta,
        adaptive=adaptive,
    )


def private_training(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: DPSGDConfig | AdaptiveDPConfig,
    n_train: int,
    batch_size: int,
    noise_generator: torch.Generator,
) -> PrivateTraining:
    """``make_private`` (Opacus hooks/functorch) or ``make_fast_private`` (bk/vmap/auto), per ``cfg``."""
    kwargs = dict(cfg=cfg, n_train=n_train, batch_size=batch_size, noise_generator=noise_generator)
    if cfg.grad_sample_mode in OPACUS_MODES:
        return make_private(model, optimizer, **kwargs)
    return make_fast_private(model, optimizer, adaptive=isinstance(cfg, AdaptiveDPConfig), **kwargs)
