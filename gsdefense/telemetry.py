"""Gradient telemetry: the paper's two marks of poisons, measured during training.

Hong et al. §3: poison gradients have larger norms and point elsewhere than
clean ones; DP-SGD's clipping and noise shrink both differences.

``mode: batches`` measures them as Hong's analysis did, over each epoch's
actual training batches at their pre-update parameters
(``gsdefense.telemetry_batches``; the Hong presets use it; it costs 10–100% of a
small model's epoch). ``mode: probe`` (default, within timing noise) measures a
fixed probe of up to ``probe_size`` clean and ``probe_size`` poison training
samples at the end of each epoch; its per-sample gradients ``g_i`` give

    ḡ_S = mean_{i∈S} g_i                      mean_grad_norm_S = ‖ḡ_S‖
    mean_grad_ratio = ‖ḡ_P‖ / ‖ḡ_C‖            mean_grad_cosine = cos(ḡ_C, ḡ_P)
    shaped ḡ_S = (Σ_{i∈S} g_i·min(1, C/‖g_i‖) + N(0, σ²C² I)) / |S|     → shaped_mean_grad_*

as the original analysis did (its subset means, renamed for what they are: they sum the subset's gradients,
so near convergence the ratio tends to n_C / n_P and the cosine to −1, see ``telemetry_batches``), and the
per-sample columns, which carry the poisons' own signal:

    sample_norm_ratio         = mean_P ‖g_i‖ / mean_C ‖g_i‖
    clipped_sample_norm_ratio = mean_P min(‖g_i‖, C) / mean_C min(‖g_i‖, C)     (DP runs only)
    poison_sample_cosine      = mean_{i∈P} cos(g_i, ḡ_C)    clean_sample_cosine = mean_{i∈C} cos(g_i, ḡ_C)

``scope: last_layer`` (default) analyses the kernel of the final Linear layer,
as the original did; the probe then clips on that layer's per-sample norm (batches mode on
the whole-model norm the DP update used, as the original's analysis clipped). Its
per-sample gradients are exact and need no backward pass: for a final layer
``z = W a + b`` under cross-entropy, ``∂ℓ_i/∂W = (softmax(z_i) − e_{y_i}) a_iᵀ``.
``scope: all`` takes every parameter via ``torch.func`` (vmap of grad) and
clips on the whole-model norm, as the optimizer does; it costs a per-sample
backward pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from gsdefense.errors import ConfigError
from gsdefense.registry import to_dataclass
from gsdefense.telemetry_batches import BatchTelemetry


@dataclass
class TelemetryConfig:
    enabled: bool = True
    mode: str = "probe"  # probe: a fixed probe at epoch end (cheap) | batches: each epoch's batches, as Hong's analysis
    probe_size: int = 64
    scope: str = "last_layer"  # last_layer (the original's analysis, cheap) | all (every parameter, vmap)
    every_n_epochs: int = 1  # measure at the end of every N-th epoch (and the last)
    every_n_steps: int | None = None  # extra rows in telemetry.csv
    seed: int = 0
    original_format: bool = False  # mextracts/aextracts_epoch.csv headerless, as the original's (else a header row)


def telemetry_config(node) -> TelemetryConfig:
    cfg = to_dataclass(node, TelemetryConfig, group="telemetry")
    if cfg.mode not in MODES:
        raise ConfigError("telemetry.mode", f"unknown mode {cfg.mode!r}.", f"use one of {', '.join(MODES)}.")
    if cfg.mode == "batches" and cfg.scope != "last_layer":
        raise ConfigError("telemetry.scope", "mode=batches analyses the last layer only.", "use scope=last_layer.")
    if cfg.probe_size <= 0:
        raise ConfigError("telemetry.probe_size", f"must be > 0 (got {cfg.probe_size}).")
    if cfg.scope not in ("all", "last_layer"):
        raise ConfigError("telemetry.scope", f"unknown scope {cfg.scope!r}.", "use all or last_layer.")
    if cfg.every_n_epochs <= 0:
        raise ConfigError("telemetry.every_n_epochs", f"must be > 0 (got {cfg.every_n_epochs}).")
    if cfg.every_n_steps is not None and cfg.every_n_steps <= 0:
        raise ConfigError("telemetry.every_n_steps", f"must be > 0 or null (got {cfg.every_n_steps}).")
    return cfg


MODES = ("batches", "probe")


def _probe(mask: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    idx = mask.nonzero().squeeze(1)
    order = torch.randperm(len(idx), generator=generator)[:size].to(idx.device)
    return idx[order].sort().values


class GradientProbe:
    """Measures telemetry on a fixed probe; ``clip``/``noise`` None means vanilla (shaped = raw)."""

    def __init__(
        self,
        cfg: TelemetryConfig,
        *,
        x: torch.Tensor,
        y: torch.Tensor,
        is_poison: torch.Tensor,
        clip: float | None,
        noise: float | None,
    ) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        self.cfg, self.clip, self.noise = cfg, clip, noise
        self.clean_idx = _probe(~is_poison, cfg.probe_size, gen)
        self.poison_idx = _probe(is_poison, cfg.probe_size, gen)
        self.x, self.y = x, y
        # its own noise stream: measuring must not change the training run
        self.noise_gen = torch.Generator(device=x.device).manual_seed(cfg.seed + 1)
        self.twin: nn.Module | None = None
        self.batches: BatchTelemetry | None = None
        if cfg.mode == "batches":
            self.batches = BatchTelemetry(y=y, is_poison=is_poison, clips=[clip], noises=[noise],
                                          generator=self.noise_gen)  # fmt: skip
        self.capture_by_forward = False  # set by engines whose forward runs under vmap (hooks see no batch)

    def attach(self, model: nn.Module) -> None:
        """Keep a hook-free copy of ``model``'s structure; call before Opacus wraps it.

        Opacus' backward hooks cannot run under ``torch.func``; the twin is only
        ever called functionally, with the live model's parameters. ``scope: last_layer``
        needs no backward pass, so no twin.
        """
        if self.cfg.scope == "all":
            self.twin = copy.deepcopy(model).eval()
        if self.batches is not None:
            self.batches.attach(model)

    def detach(self) -> None:
        if self.batches is not None:
            self.batches.detach()

    def begin_step(self, model: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> None:
        """Before a training step on ``x[idx]``: capture the last layer at the pre-update parameters (batches mode)."""
        if self.batches is None:
            return
        self.batches.arm()
        if self.capture_by_forward:
            with torch.no_grad():
                was = model.training
                model(x[idx])
                model.train(was)

    def end_step(
        self, idx: torch.Tensor, weight: torch.Tensor | None = None, *, norms: torch.Tensor | None = None
    ) -> None:
        """After the step on ``idx``: book it (batches mode); ``norms``: the per-sample norms the DP update
        clipped with (``optimizer.last_norms``), on the device."""
        if self.batches is not None:
            self.batches.record_captured(idx, weight, norms)

    def begin_epoch(self) -> None:
        if self.batches is not None:
            self.batches.reset()  # an epoch that was not reported leaves nothing behind

    def measure(self, model: nn.Module) -> dict[str, float | None]:
        """The epoch's telemetry row: the epoch's batches (batches mode) or the fixed probe now."""
        if self.batches is not None:
            out: dict[str, float | None] = dict.fromkeys(COLUMNS)
            out.update(self.batches.end_epoch()[0])
            return out
        return self.probe_row(model)

    @torch.no_grad()
    def _last_layer(self, model: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample gradients of the final Linear kernel (flattened), their norms, and the logits."""
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        seen: dict[str, torch.Tensor] = {}
        handle = last.register_forward_hook(lambda mod, inp, out: seen.update(a=inp[0], z=out))
        try:
            logits = model(self.x[idx])
        finally:
            handle.remove()
        delta = seen["z"].softmax(1) - F.one_hot(self.y[idx], seen["z"].shape[1])
        g = (delta[:, :, None] * seen["a"][:, None, :]).flatten(1)
        return g, g.norm(dim=1), logits

    def _per_sample(self, model: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened per-sample gradients of every parameter, and their norms."""
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}

        twin = self.twin if self.twin is not None else model

        def loss(p, x, y):
            return F.cross_entropy(functional_call(twin, (p, buffers), (x[None],)), y[None])

        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, self.x[idx], self.y[idx])
        flat = torch.cat([g.flatten(1) for g in grads.values()], 1)
        return flat, flat.norm(dim=1)

    def _shaped_mean(self, g: torch.Tensor, full_norm: torch.Tensor) -> torch.Tensor:
        if self.clip is None:
            return g.mean(0)
        factor = (self.clip / (full_norm + 1e-6)).clamp(max=1.0)
        total = (g * factor[:, None]).sum(0)
        total += torch.randn(total.shape, generator=self.noise_gen, device=g.device) * (self.noise * self.clip)
        return total / len(g)

    def probe_row(self, model: nn.Module) -> dict[str, float | None]:
        """Telemetry on the fixed probe at the current parameters."""
        was_training = model.training
        model.eval()  # Opacus' hooks stay idle outside train mode
        out: dict[str, float | None] = dict.fromkeys(COLUMNS)
        m = len(self.clean_idx)
        idx = torch.cat([self.clean_idx, self.poison_idx])  # one pass for both subsets
        if self.cfg.scope == "last_layer":
            g_all, n_all, logits = self._last_layer(model, idx)
        else:
            g_all, n_all = self._per_sample(model, idx)
            with torch.no_grad():
                logits = model(self.x[idx])
        correct = logits.argmax(1) == self.y[idx]
        g_c, n_c = g_all[:m], n_all[:m]
        mean_c, shaped_c = g_c.mean(0), self._shaped_mean(g_c, n_c)
        cosines = F.cosine_similarity(g_all, mean_c[None], dim=1)  # cos(g_i, ḡ_C), every probe sample
        out["mean_grad_norm_clean"] = float(mean_c.norm())
        out["clean_sample_cosine"] = float(cosines[:m].mean())
        out["clean_train_acc"] = float(correct[:m].float().mean())
        out["shaped_mean_grad_norm_clean"] = float(shaped_c.norm())
        if len(self.poison_idx):
            g_p, n_p = g_all[m:], n_all[m:]
            mean_p, shaped_p = g_p.mean(0), self._shaped_mean(g_p, n_p)
            out["mean_grad_norm_poison"] = float(mean_p.norm())
            out["mean_grad_ratio"] = out["mean_grad_norm_poison"] / max(out["mean_grad_norm_clean"], 1e-12)
            out["mean_grad_cosine"] = float(F.cosine_similarity(mean_c, mean_p, dim=0))
            out["sample_norm_ratio"] = float(g_p.norm(dim=1).mean() / g_c.norm(dim=1).mean().clamp_min(1e-12))
            if self.clip is not None:
                low = n_all.clamp(max=self.clip)
                out["clipped_sample_norm_ratio"] = float(low[m:].mean() / low[:m].mean().clamp_min(1e-12))
            out["poison_sample_cosine"] = float(cosines[m:].mean())
            out["shaped_mean_grad_norm_poison"] = float(shaped_p.norm())
            out["shaped_mean_grad_ratio"] = float(shaped_p.norm() / shaped_c.norm().clamp_min(1e-12))
            out["shaped_mean_grad_cosine"] = float(F.cosine_similarity(shaped_c, shaped_p, dim=0))
            out["poison_train_acc"] = float(correct[m:].float().mean())
        model.train(was_training)
        return out


COLUMNS = (
    # the original analysis' subset means (their ratio and cosine tend to n_C/n_P and −1: see telemetry_batches)
    "mean_grad_norm_clean",
    "mean_grad_norm_poison",
    "mean_grad_ratio",
    "mean_grad_cosine",
    # per-sample: the poisons' own gradients against the clean ones
    "sample_norm_ratio",
    "clipped_sample_norm_ratio",
    "poison_sample_cosine",
    "clean_sample_cosine",
    # the subset means as DP shapes them (clipped, noised)
    "shaped_mean_grad_norm_clean",
    "shaped_mean_grad_norm_poison",
    "shaped_mean_grad_ratio",
    "shaped_mean_grad_cosine",
    "clean_train_acc",
    "poison_train_acc",
)
MEXTRACTS_HEADER = "shaped_mean_grad_norm_clean,shaped_mean_grad_norm_poison"
AEXTRACTS_HEADER = "shaped_mean_grad_cosine"


def original_exports(history: list[dict], *, header: bool = True) -> tuple[list[str], list[str]]:
    """Lines of the original tool's ``mextracts_epoch.csv`` and ``aextracts_epoch.csv``, one per epoch with
    poisons, after a header row naming the history.csv columns they repeat (``header=False``: headerless, as the
    original's files). Like the original, DP runs export the shaped (clipped + noised) means.
    """
    rows = [r for r in history if r.get("shaped_mean_grad_norm_poison") is not None]
    if not rows:
        return [], []
    mextracts = [f"{r['shaped_mean_grad_norm_clean']!r},{r['shaped_mean_grad_norm_poison']!r}" for r in rows]
    aextracts = [repr(r["shaped_mean_grad_cosine"]) for r in rows]
    if header:
        mextracts, aextracts = [MEXTRACTS_HEADER, *mextracts], [AEXTRACTS_HEADER, *aextracts]
    return mextracts, aextracts
