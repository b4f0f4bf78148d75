"""The ``dp`` config group: DP-SGD through Opacus, or none.

DP-SGD (Abadi et al. 2016; Hong et al. Alg. 1) per step, on a Poisson batch B
drawn with rate q:

    g = ( Σ_{i∈B} g_i · min(1, C / ‖g_i‖)  +  N(0, (σ·C)² I) ) / ⌊q·n⌋

with ``C = clip`` and the noise multiplier ``σ = noise``. The noise may instead be stated as its absolute
std ``noise_std`` (= σ·C), the paper's σ as Hong et al.'s code used it (``do_ipoisoning.sh`` passes
``noise / nclip`` to TF-Privacy as the multiplier; their Alg. 1 adds N(0, σ² I)): validation turns it into
``noise = noise_std / C``, so both spellings of one setting are one run, one ε and one noise stream.
Opacus' ``PrivacyEngine.make_private``
builds the per-sample-gradient model, the clipping/noising optimizer and the
accountant; with ``optimizer=adam`` the same wrapper gives DP-Adam.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from gsdefense.errors import ConfigError
from gsdefense.registry import Registry
from gsdefense.training.accounting import PrivateTraining, rdp_epsilon
from gsdefense.training.adaptive import AdaptiveDPConfig, AdaptiveDPOptimizer, NormRecordingDPOptimizer
from gsdefense.training.engine import GRAD_SAMPLE_MODES, OPACUS_MODES, poisson_rate, resolve_engine
from gsdefense.training.fast_dp import make_fast_private

# Opacus' full backward hooks fire on the first layer although inputs need no grad: harmless, and noisy.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Secure RNG turned off")

DP: Registry[object] = Registry("dp")
ACCOUNTANTS = ("rdp", "prv", "gdp")
__all__ = [
    "DP", "DPSGDConfig", "NoDPConfig", "PrivateTraining", "dp_config", "dp_metrics", "private_training", "rdp_epsilon",
]  # fmt: skip


@dataclass
class NoDPConfig:
    name: str = "none"


DEFAULT_NOISE = 1.0  # the multiplier when neither noise nor noise_std is given


@dataclass
class DPSGDConfig:
    name: str = "dpsgd"
    clip: float = 1.0
    noise: float | None = DEFAULT_NOISE  # multiplier σ (std σ·C); after validation always a number
    noise_std: float | None = None  # absolute std σ·C instead (exclusive with noise); validation folds it into noise
    delta: float = 1e-5
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"
    fixed_shape: bool | None = None  # pad Poisson batches to buckets (exact; bk/vmap); null: on CUDA only


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
    cfg = _resolve_noise(cfg)
    if not cfg.noise >= 0:
        raise ConfigError("dp.noise", f"must be >= 0 (got {cfg.noise}).", "pass the noise multiplier σ, e.g. 1.0.")
    if not 0 < cfg.delta < 1:
        raise ConfigError("dp.delta", f"must be in (0, 1) (got {cfg.delta}).")
    if cfg.accountant not in ACCOUNTANTS:
        raise ConfigError("dp.accountant", f"unknown accountant {cfg.accountant!r}.", f"use one of {ACCOUNTANTS}.")
    if cfg.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError("dp.grad_sample_mode", f"unknown mode {cfg.grad_sample_mode!r}.", f"use {GRAD_SAMPLE_MODES}.")
    return cfg


def _resolve_noise(cfg: DPSGDConfig) -> DPSGDConfig:
    """``noise`` as the effective multiplier: ``noise_std / clip`` when the std is given, 1.0 when neither is.

    The quotient is rounded to 12 significant digits, so ``noise_std=0.3 clip=3`` is ``noise=0.1`` exactly (the
    same run); ``noise_std`` is then cleared, leaving one canonical form for ids, seeds and every engine.
    """
    if cfg.noise_std is None:
        return cfg if cfg.noise is not None else dataclasses.replace(cfg, noise=DEFAULT_NOISE)
    if cfg.noise is not None:
        raise ConfigError(
            "dp.noise_std", f"is given together with dp.noise ({cfg.noise} and {cfg.noise_std}).",
            f"state the noise once: dp.noise=null dp.noise_std={cfg.noise_std}, or dp.noise_std=null.",
        )  # fmt: skip
    if not cfg.noise_std >= 0:
        raise ConfigError("dp.noise_std", f"must be >= 0 (got {cfg.noise_std}).", "pass the noise std, e.g. 0.1.")
    return dataclasses.replace(cfg, noise=float(f"{cfg.noise_std / cfg.clip:.12g}"), noise_std=None)


def dp_metrics(dp: DPSGDConfig | AdaptiveDPConfig | None) -> dict[str, float | None]:
    """metrics.json's noise settings: ``delta``, the multiplier σ and the absolute std σ·C (adaptive: epoch 1's)."""
    if dp is None:
        return {"delta": None, "noise_multiplier": None, "noise_std": None}
    return {"delta": dp.delta, "noise_multiplier": dp.noise, "noise_std": dp.noise * dp.clip}


def dp_config(node) -> DPSGDConfig | AdaptiveDPConfig | None:
    """The validated DP settings, or None for vanilla training."""
    return DP.builder(node)(DP.config(node))


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: DPSGDConfig | AdaptiveDPConfig,
    n_train: int,
    batch_size: int,
    noise_generator: torch.Generator,
) -> PrivateTraining:
    """Wrap model and optimizer with Opacus (``hooks``/``functorch``) at the rate of ``engine.poisson_rate``.

    Opacus wants a DataLoader only to read q and the expected batch size; the loop samples its Poisson
    batches on the device instead of iterating Opacus' per-sample Python loader. The index loader has
    exactly ⌈n/B⌉ batches, so q = 1/⌈n/B⌉ as in every engine (Opacus' DPDataLoader would give
    1/int(1/q), which is 1/(k−1) for some k, e.g. 93).
    """
    if cfg.grad_sample_mode not in OPACUS_MODES:
        raise ValueError(f"make_private is the Opacus route ({OPACUS_MODES}); use private_training otherwise")
    sample_rate, expected_batch_size = poisson_rate(n_train, batch_size)
    engine = PrivacyEngine(accountant=cfg.accountant)
    index_loader = DataLoader(TensorDataset(torch.arange(n_train)), batch_size=batch_size)
    module, dp_optimizer, _ = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=index_loader,
        noise_multiplier=cfg.noise,
        max_grad_norm=cfg.clip,
        poisson_sampling=False,  # the loop samples; q stays exactly 1/len(index_loader)
        noise_generator=noise_generator,
        grad_sample_mode=cfg.grad_sample_mode,
    )
    module.forbid_grad_accumulation()
    assert dp_optimizer.expected_batch_size == expected_batch_size
    adaptive = isinstance(cfg, AdaptiveDPConfig)
    # Same clipping and noise machinery; it also keeps the per-sample norms it clipped with (telemetry), and,
    # adaptive, changes the noise std per epoch.
    kind, extra = (AdaptiveDPOptimizer, {"base_noise": cfg.noise}) if adaptive else (NormRecordingDPOptimizer, {})
    dp_optimizer = kind(
        dp_optimizer.original_optimizer,
        noise_multiplier=cfg.noise,
        max_grad_norm=cfg.clip,
        expected_batch_size=dp_optimizer.expected_batch_size,
        generator=noise_generator,
        **extra,
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
    """The DP route ``engine.resolve_engine`` picks for ``model`` (which also validates it for DP)."""
    engine = resolve_engine(cfg.grad_sample_mode, model)
    kwargs = dict(cfg=cfg, n_train=n_train, batch_size=batch_size, noise_generator=noise_generator)
    if engine in OPACUS_MODES:
        return make_private(model, optimizer, **kwargs)
    return make_fast_private(model, optimizer, mode=engine, adaptive=isinstance(cfg, AdaptiveDPConfig), **kwargs)
